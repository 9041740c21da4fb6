//! NVML inside a slice shows the slice: two slices share one simulated GPU, each with a process
//! holding memory and one keeping the device busy, and an NVML program (this test binary run
//! again, `nvmlDevice*` found with `dlopen` + `dlsym` as `nvidia-ml-py` finds them) asks from
//! slice A, from outside any slice, and about a GPU without a slice.
//!
//! Slice A sees its own processes only, each with what A charged it; B's PIDs never appear, in
//! the process lists or in the utilisation samples; A's utilisation is A's work (0 while only B
//! works); memory, `_v2` and BAR1 are A's. Outside a slice, and for a device without one, NVML
//! answers as the driver does.

mod common;

use std::collections::BTreeMap;
use std::ffi::{CStr, c_uint, c_void};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gpuslice_cuda_abi::nvml::{self, nvmlDevice_t, nvmlReturn_t, sym};

const LIMIT_A: u64 = 4 * GIB;
const LIMIT_B: u64 = 6 * GIB;
const CHILD_ENV: &str = "GPUSLICE_TEST_CLIENT";

/// The NVML calls the views cover, resolved by name.
struct Nvml {
    by_index: sym::nvmlDeviceGetHandleByIndex_v2,
    compute_v1: sym::nvmlDeviceGetComputeRunningProcesses,
    compute_v2: sym::nvmlDeviceGetComputeRunningProcesses_v2,
    compute_v3: sym::nvmlDeviceGetComputeRunningProcesses_v3,
    graphics_v3: sym::nvmlDeviceGetGraphicsRunningProcesses_v3,
    rates: sym::nvmlDeviceGetUtilizationRates,
    process_util: sym::nvmlDeviceGetProcessUtilization,
    samples: sym::nvmlDeviceGetSamples,
    memory: sym::nvmlDeviceGetMemoryInfo,
    memory_v2: sym::nvmlDeviceGetMemoryInfo_v2,
    bar1: sym::nvmlDeviceGetBAR1MemoryInfo,
    detail_list: sym::nvmlDeviceGetRunningProcessDetailList,
    utilization_info: sym::nvmlDeviceGetProcessesUtilizationInfo,
}

macro_rules! resolve {
    ($handle:expr, $($field:ident = $name:ident),* $(,)?) => {{
        let handle = $handle;
        // SAFETY: each symbol is the NVML function of that name, with nvml.h's signature.
        unsafe {
            Nvml { $( $field: std::mem::transmute::<*mut c_void, sym::$name>(lookup(handle, concat!(stringify!($name), "\0"))), )* }
        }
    }};
}

fn lookup(handle: *mut c_void, name: &str) -> *mut c_void {
    let name = CStr::from_bytes_with_nul(name.as_bytes()).unwrap();
    // SAFETY: a handle from dlopen and a NUL-terminated name.
    let f = unsafe { libc::dlsym(handle, name.as_ptr()) };
    assert!(!f.is_null(), "{name:?} is not exported");
    f
}

impl Nvml {
    fn load() -> Nvml {
        // SAFETY: loading the (simulated) NVML, as any NVML program does.
        let handle = unsafe { libc::dlopen(c"libnvidia-ml.so.1".as_ptr(), libc::RTLD_NOW) };
        assert!(!handle.is_null(), "dlopen libnvidia-ml.so.1");
        let init: sym::nvmlInit_v2 = {
            // SAFETY: nvmlInit_v2's signature.
            unsafe { std::mem::transmute::<*mut c_void, sym::nvmlInit_v2>(lookup(handle, "nvmlInit_v2\0")) }
        };
        // SAFETY: no arguments.
        assert_eq!(unsafe { init() }, nvml::NVML_SUCCESS);
        resolve!(
            handle,
            by_index = nvmlDeviceGetHandleByIndex_v2,
            compute_v1 = nvmlDeviceGetComputeRunningProcesses,
            compute_v2 = nvmlDeviceGetComputeRunningProcesses_v2,
            compute_v3 = nvmlDeviceGetComputeRunningProcesses_v3,
            graphics_v3 = nvmlDeviceGetGraphicsRunningProcesses_v3,
            rates = nvmlDeviceGetUtilizationRates,
            process_util = nvmlDeviceGetProcessUtilization,
            samples = nvmlDeviceGetSamples,
            memory = nvmlDeviceGetMemoryInfo,
            memory_v2 = nvmlDeviceGetMemoryInfo_v2,
            bar1 = nvmlDeviceGetBAR1MemoryInfo,
            detail_list = nvmlDeviceGetRunningProcessDetailList,
            utilization_info = nvmlDeviceGetProcessesUtilizationInfo,
        )
    }

    fn device(&self, index: u32) -> nvmlDevice_t {
        let mut d = std::ptr::null_mut();
        // SAFETY: a live output.
        assert_eq!(unsafe { (self.by_index)(index, &mut d) }, nvml::NVML_SUCCESS);
        d
    }
}

/// A process list by nvml.h's two-call convention, as `pid:bytes` pairs; the size query
/// (`*count == 0`) must ask for room when there is something to list.
fn processes<T: Copy + Default>(
    d: nvmlDevice_t,
    f: unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut T) -> nvmlReturn_t,
    get: fn(&T) -> (u32, u64),
) -> Vec<(u32, u64)> {
    let mut n: c_uint = 0;
    // SAFETY: the size query: a live count, a null buffer.
    let rc = unsafe { f(d, &mut n, std::ptr::null_mut()) };
    if rc == nvml::NVML_SUCCESS {
        assert_eq!(n, 0);
        return Vec::new();
    }
    assert_eq!(rc, nvml::NVML_ERROR_INSUFFICIENT_SIZE, "the size query");
    let needed = n;
    let mut buf = vec![T::default(); n as usize + 4];
    n = buf.len() as c_uint;
    // SAFETY: a buffer of `n` entries.
    assert_eq!(unsafe { f(d, &mut n, buf.as_mut_ptr()) }, nvml::NVML_SUCCESS);
    // Processes may start or end between the two calls.
    assert!(needed > 0 && n as usize <= buf.len(), "the size query asked for room: {needed}, then {n}");
    buf[..n as usize].iter().map(get).collect()
}

fn show(list: &[(u32, u64)]) -> String {
    list.iter().map(|(p, b)| format!("{p}:{b}")).collect::<Vec<_>>().join(",")
}

/// What NVML shows of device `index` to this process, printed as `key=value` lines.
fn report_view(nv: &Nvml, index: u32) {
    let d = nv.device(index);
    let v1 = processes(d, nv.compute_v1, |p: &nvml::nvmlProcessInfo_v1_t| (p.pid, p.usedGpuMemory));
    let v2 = processes(d, nv.compute_v2, |p: &nvml::nvmlProcessInfo_v2_t| (p.pid, p.usedGpuMemory));
    let v3 = processes(d, nv.compute_v3, |p: &nvml::nvmlProcessInfo_v2_t| (p.pid, p.usedGpuMemory));
    let graphics = processes(d, nv.graphics_v3, |p: &nvml::nvmlProcessInfo_v2_t| (p.pid, p.usedGpuMemory));
    println!(
        "\ncompute_v1={}\ncompute_v2={}\ncompute_v3={}\ngraphics_v3={}",
        show(&v1),
        show(&v2),
        show(&v3),
        show(&graphics)
    );
    let mut u = nvml::nvmlUtilization_t::default();
    // SAFETY: a live output.
    assert_eq!(unsafe { (nv.rates)(d, &mut u) }, nvml::NVML_SUCCESS);
    println!("util_gpu={}\nutil_memory={}", u.gpu, u.memory);
    // Per-process samples: size query, then the samples.
    let mut n: c_uint = 0;
    // SAFETY: the size query: a live count, a null buffer.
    let rc = unsafe { (nv.process_util)(d, std::ptr::null_mut(), &mut n, 0) };
    let mut samples = Vec::new();
    if rc == nvml::NVML_ERROR_INSUFFICIENT_SIZE {
        let mut buf = vec![nvml::nvmlProcessUtilizationSample_t::default(); n as usize + 4];
        n = buf.len() as c_uint;
        // SAFETY: a buffer of `n` samples.
        let rc = unsafe { (nv.process_util)(d, buf.as_mut_ptr(), &mut n, 0) };
        if rc == nvml::NVML_SUCCESS {
            samples = buf[..n as usize].iter().map(|s| (s.pid, u64::from(s.smUtil))).collect();
        } else {
            assert_eq!(rc, nvml::NVML_ERROR_NOT_FOUND, "samples went away between the calls");
        }
    } else {
        assert_eq!(rc, nvml::NVML_ERROR_NOT_FOUND, "no process sample");
        assert_eq!(n, 0);
    }
    println!("process_util={}", show(&samples));
    // The versioned forms of NVML 12.4+: nvmlProcessDetailList_v1, nvmlProcessesUtilizationInfo_v1.
    let mut list = nvml::nvmlProcessDetailList_v1_t {
        version: 0x0100_0018,
        mode: 0,
        numProcArrayEntries: 0,
        procArray: std::ptr::null_mut(),
    };
    // SAFETY: the size query: a live struct with no array.
    let rc = unsafe { (nv.detail_list)(d, &mut list) };
    let mut details = Vec::new();
    if rc == nvml::NVML_ERROR_INSUFFICIENT_SIZE {
        let mut buf = vec![nvml::nvmlProcessDetail_v1_t::default(); list.numProcArrayEntries as usize + 4];
        (list.numProcArrayEntries, list.procArray) = (buf.len() as c_uint, buf.as_mut_ptr());
        // SAFETY: a live struct whose array holds numProcArrayEntries entries.
        assert_eq!(unsafe { (nv.detail_list)(d, &mut list) }, nvml::NVML_SUCCESS);
        details = buf[..list.numProcArrayEntries as usize].iter().map(|p| (p.pid, p.usedGpuMemory)).collect();
    } else {
        assert_eq!(rc, nvml::NVML_SUCCESS);
    }
    println!("detail_list={}", show(&details));
    let mut info = nvml::nvmlProcessesUtilizationInfo_v1_t {
        version: 0x0100_0018,
        processSamplesCount: 0,
        lastSeenTimeStamp: 0,
        procUtilArray: std::ptr::null_mut(),
    };
    // SAFETY: the size query: a live struct with no array.
    let rc = unsafe { (nv.utilization_info)(d, &mut info) };
    let mut infos = Vec::new();
    if rc == nvml::NVML_ERROR_INSUFFICIENT_SIZE {
        let mut buf = vec![nvml::nvmlProcessUtilizationInfo_v1_t::default(); info.processSamplesCount as usize + 4];
        (info.processSamplesCount, info.procUtilArray) = (buf.len() as c_uint, buf.as_mut_ptr());
        // SAFETY: a live struct whose array holds processSamplesCount entries.
        let rc = unsafe { (nv.utilization_info)(d, &mut info) };
        if rc == nvml::NVML_SUCCESS {
            infos = buf[..info.processSamplesCount as usize].iter().map(|s| (s.pid, u64::from(s.smUtil))).collect();
        }
    } else {
        assert_eq!(rc, nvml::NVML_ERROR_NOT_FOUND);
    }
    println!("utilization_info={}", show(&infos));
    // Device samples of GPU utilisation since a second ago.
    let (mut kind, mut count) = (0, 0 as c_uint);
    let since = now_us() - 1_000_000;
    // SAFETY: live outputs, a null buffer: the size query.
    let rc = unsafe {
        (nv.samples)(d, nvml::NVML_GPU_UTILIZATION_SAMPLES, since, &mut kind, &mut count, std::ptr::null_mut())
    };
    assert_eq!(rc, nvml::NVML_SUCCESS, "nvmlDeviceGetSamples' size query");
    assert_eq!(kind, nvml::NVML_VALUE_TYPE_UNSIGNED_INT);
    let mut buf =
        vec![nvml::nvmlSample_t { timeStamp: 0, sampleValue: nvml::nvmlValue_t { ullVal: 0 } }; count as usize];
    // SAFETY: a buffer of `count` samples.
    let rc =
        unsafe { (nv.samples)(d, nvml::NVML_GPU_UTILIZATION_SAMPLES, since, &mut kind, &mut count, buf.as_mut_ptr()) };
    assert_eq!(rc, nvml::NVML_SUCCESS, "nvmlDeviceGetSamples");
    let got = &buf[..count as usize];
    assert!(got.iter().all(|s| s.timeStamp > since), "only samples after lastSeenTimeStamp");
    // SAFETY: the samples are NVML_VALUE_TYPE_UNSIGNED_INT.
    let max = got.iter().map(|s| unsafe { s.sampleValue.uiVal }).max().unwrap_or(0);
    println!("samples={}\nsamples_max={max}", got.len());
    // None after a timestamp in the future.
    let mut one = buf
        .first()
        .copied()
        .unwrap_or(nvml::nvmlSample_t { timeStamp: 0, sampleValue: nvml::nvmlValue_t { ullVal: 0 } });
    let mut room: c_uint = 1;
    // SAFETY: a buffer of one sample.
    let rc = unsafe {
        (nv.samples)(d, nvml::NVML_GPU_UTILIZATION_SAMPLES, now_us() + 60_000_000, &mut kind, &mut room, &mut one)
    };
    println!("samples_future_rc={rc}");
    let mut m = nvml::nvmlMemory_t::default();
    // SAFETY: a live output.
    assert_eq!(unsafe { (nv.memory)(d, &mut m) }, nvml::NVML_SUCCESS);
    println!("mem_total={}\nmem_used={}\nmem_free={}", m.total, m.used, m.free);
    let mut m2 = nvml::nvmlMemory_v2_t {
        version: (size_of::<nvml::nvmlMemory_v2_t>() as u32) | (2 << 24),
        ..Default::default()
    };
    // SAFETY: a live output with its version set.
    assert_eq!(unsafe { (nv.memory_v2)(d, &mut m2) }, nvml::NVML_SUCCESS);
    println!("mem2_total={}\nmem2_reserved={}\nmem2_used={}\nmem2_free={}", m2.total, m2.reserved, m2.used, m2.free);
    let mut b = nvml::nvmlBAR1Memory_t::default();
    // SAFETY: a live output.
    assert_eq!(unsafe { (nv.bar1)(d, &mut b) }, nvml::NVML_SUCCESS);
    println!("bar1_total={}\nbar1_used={}\nbar1_free={}", b.bar1Total, b.bar1Used, b.bar1Free);
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

/// The client's `key=value` lines.
fn lines(o: &Output) -> BTreeMap<String, String> {
    stdout(o).lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn pids(list: &str) -> Vec<(u32, u64)> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (p, b) = s.split_once(':').unwrap();
            (p.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

fn num(v: &BTreeMap<String, String>, key: &str) -> u64 {
    v.get(key).unwrap_or_else(|| panic!("no {key} in {v:?}")).parse().unwrap()
}

/// This test binary as the NVML client for `test`, reporting on device `index`: in `slice`,
/// or bare (the host's view, no shim) when `None`.
fn client(node: &Node, test: &str, slice: Option<&str>, index: u32) -> Command {
    let exe = std::env::current_exe().unwrap();
    let args = [test, "--exact", "--nocapture", "--test-threads=1"];
    let mut c = match slice {
        Some(s) => node.command_in(s, &exe, &args),
        None => node.bare(&exe, &args),
    };
    c.env(CHILD_ENV, test).env("NVML_VIEW_INDEX", index.to_string());
    c
}

fn view(node: &Node, test: &str, slice: Option<&str>, index: u32) -> BTreeMap<String, String> {
    let out = client(node, test, slice, index).output().unwrap();
    assert!(
        out.status.success() && stdout(&out).contains("test result: ok. 1 passed"),
        "NVML client failed ({}):\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    lines(&out)
}

/// Polls `view` until `done` holds, for up to 20 s.
fn view_until(
    node: &Node,
    test: &str,
    slice: Option<&str>,
    index: u32,
    what: &str,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = view(node, test, slice, index);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within 20 s; last view: {v:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn hold(node: &Node, slice: &str, chunks: u32) -> Child {
    let mut c = node
        .command_in(
            slice,
            &probes().0,
            &["fill", "--path", "alloc", "--chunk", "64M", "--max-chunks", &chunks.to_string(), "--hold-forever"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_holding(&mut c);
    c
}

fn work(mut c: Command) -> Child {
    c.args(["work", "--path", "kernel", "--kernel-ns", "2000000", "--seconds", "60"]);
    c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

/// What the region of `slice` charges process `pid`.
fn charged(node: &Node, slice: &str, pid: u32) -> u64 {
    node.region(slice).slots().unwrap().iter().filter(|s| s.alive && s.pid == pid).map(|s| s.used).sum()
}

#[test]
fn a_slice_sees_its_own_processes_memory_and_work_and_nothing_of_another() {
    const NAME: &str = "a_slice_sees_its_own_processes_memory_and_work_and_nothing_of_another";
    if std::env::var(CHILD_ENV).is_ok_and(|v| v == NAME) {
        let index = std::env::var("NVML_VIEW_INDEX").unwrap().parse().unwrap();
        report_view(&Nvml::load(), index);
        return;
    }
    if skip_unless_root(NAME) {
        return;
    }
    let mut node = Node::with_gpus(&[Gpu { uuid: UUID0, memory_gib: 80 }, Gpu { uuid: UUID1, memory_gib: 80 }]);
    node.slice("a", UUID0, 0, LIMIT_A).slice("b", UUID0, 0, LIMIT_B);
    let hold_a = hold(&node, "a", 2);
    let hold_b = hold(&node, "b", 5);
    // A process on the second GPU, which has no slice, outside any slice.
    let mut other = node
        .bare(
            &probes().0,
            &["--device", "1", "fill", "--path", "alloc", "--chunk", "64M", "--max-chunks", "1", "--hold-forever"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_holding(&mut other);
    let (a, b, o) = (hold_a.id(), hold_b.id(), other.id());
    let mut children = Reaper(vec![hold_a, hold_b, other]);

    // Only B works: the host sees B's work; A sees none of it.
    children.0.push(work(node.command_in("b", &probes().0, &[])));
    let work_b = children.0.last().unwrap().id();
    let has = |list: &str, pid: u32| pids(list).iter().any(|(p, _)| *p == pid);
    // Both in one view: the rate covers the last sample period, which a busy machine can leave
    // without a kernel of B's even after B's first sample.
    let host = view_until(&node, NAME, None, 0, "B's work in the host's samples and rate", |v| {
        has(&v["process_util"], work_b) && num(v, "util_gpu") > 0
    });
    assert!(has(&host["compute_v3"], a) && has(&host["compute_v3"], b), "the host sees both slices: {host:?}");
    let in_a = view(&node, NAME, Some("a"), 0);
    for key in ["compute_v1", "compute_v2", "compute_v3", "detail_list"] {
        assert_eq!(pids(&in_a[key]), vec![(a, charged(&node, "a", a))], "{key} in A: only A's holder, with A's charge");
    }
    assert_eq!(in_a["utilization_info"], "", "no sample of B's work in A");
    assert!(has(&host["utilization_info"], work_b) && has(&host["detail_list"], b), "the host's: {host:?}");
    assert_eq!(in_a["graphics_v3"], "");
    assert_eq!(num(&in_a, "util_gpu"), 0, "A is idle whatever B does: {in_a:?}");
    assert_eq!(in_a["process_util"], "", "no sample of B's work in A");
    assert_eq!(num(&in_a, "samples_max"), 0, "A's utilisation samples are A's");
    assert_eq!(num(&in_a, "samples_future_rc"), u64::from(nvml::NVML_ERROR_NOT_FOUND));
    // Memory: A's limit and A's use; BAR1 no larger than A.
    let used_a = node.region("a").usage().unwrap();
    assert_eq!((num(&in_a, "mem_total"), num(&in_a, "mem_used")), (LIMIT_A, used_a));
    assert_eq!(num(&in_a, "mem_used") + num(&in_a, "mem_free"), LIMIT_A);
    assert_eq!(num(&in_a, "mem2_total"), LIMIT_A);
    assert_eq!(num(&in_a, "mem2_reserved") + num(&in_a, "mem2_used") + num(&in_a, "mem2_free"), LIMIT_A);
    assert!(num(&in_a, "bar1_total") <= LIMIT_A && num(&in_a, "bar1_total") > 0);
    assert_eq!(num(&in_a, "bar1_used") + num(&in_a, "bar1_free"), num(&in_a, "bar1_total"));
    // The second GPU has no slice: the driver's answer, the outsider included.
    let gpu1 = view(&node, NAME, Some("a"), 1);
    assert!(has(&gpu1["compute_v3"], o), "a GPU without a slice is the driver's: {gpu1:?}");
    assert_eq!(num(&gpu1, "mem_total"), 80 * GIB);

    // Now A works too: A sees its own work, still nothing of B's.
    children.0.push(work(node.command_in("a", &probes().0, &[])));
    let work_a = children.0.last().unwrap().id();
    let in_a = view_until(&node, NAME, Some("a"), 0, "A's work in A's samples", |v| {
        has(&v["process_util"], work_a) && num(v, "util_gpu") > 0 && num(v, "samples_max") > 0
    });
    for key in ["compute_v1", "compute_v2", "compute_v3", "process_util", "detail_list", "utilization_info"] {
        let seen = pids(&in_a[key]);
        assert!(seen.iter().all(|(p, _)| [a, work_a].contains(p)), "{key} in A shows only A's processes: {in_a:?}");
        assert!(!seen.iter().any(|(p, _)| [b, work_b, o].contains(p)), "{key} in A shows B's: {in_a:?}");
    }
    assert!(has(&in_a["compute_v3"], work_a));
    assert!(num(&in_a, "util_gpu") > 0, "A's own work shows: {in_a:?}");
    assert!(num(&in_a, "samples_max") > 0, "A's own work shows in its samples: {in_a:?}");
    let in_b = view(&node, NAME, Some("b"), 0);
    assert!(!has(&in_b["compute_v3"], a) && !has(&in_b["process_util"], work_a), "B sees nothing of A: {in_b:?}");
    assert!(has(&in_b["compute_v3"], b) && has(&in_b["compute_v3"], work_b));
}
