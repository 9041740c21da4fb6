//! Which processes use a GPU, as the simulated NVML reports them: each process holding memory
//! with all it holds, and each process the device worked for, both by the PIDs of the asking
//! process's namespace, as a real driver reports host PIDs. The processes are real (the CUDA
//! probe), in this PID namespace and in others (`unshare --pid --fork`, as root).
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::c_uint;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::ptr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Fixture, PROBE_DIR_ENV, config_with, have_cc, is_child, lib_path, probes};
use fakegpu::state::DeviceState;
use nvml_wrapper::Nvml;
use nvml_wrapper_sys::bindings::{NvmlLib, nvmlDevice_t, nvmlProcessInfo_v1_t, nvmlProcessInfo_v2_t};

const GIB: u64 = 1 << 30;
/// What each CUDA context takes on the simulated GPU by default.
const CONTEXT: u64 = 256 << 20;

const SUCCESS: u32 = 0;
const INVALID_ARGUMENT: u32 = 2;
const INSUFFICIENT_SIZE: u32 = 7;

/// Run test `name` in a child on a one-GPU machine with the probes built; `false` in the
/// parent (and when no C compiler can build the probes).
fn in_child(name: &str) -> bool {
    if is_child(name) {
        return true;
    }
    if have_cc(name) {
        let fx = Fixture::new(&config_with(1, ""));
        let mut cmd = fx.command(name);
        cmd.env(PROBE_DIR_ENV, &probes().dir);
        common::run_child(cmd, name);
    }
    false
}

fn nvml() -> Nvml {
    Nvml::builder().lib_path(lib_path().as_os_str()).init().unwrap()
}

fn raw() -> NvmlLib {
    // SAFETY: loading the simulated NVML, whose initialisers are trivial.
    unsafe { NvmlLib::new(lib_path()) }.unwrap()
}

/// The processes NVML lists on GPU 0, as (pid, bytes).
fn listed(nvml: &Nvml) -> Vec<(u32, u64)> {
    let dev = nvml.device_by_index(0).unwrap();
    dev.running_compute_processes()
        .unwrap()
        .into_iter()
        .map(|p| match p.used_gpu_memory {
            nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => (p.pid, b),
            other => panic!("pid {}: {other:?}", p.pid),
        })
        .collect()
}

/// Poll (at most 10 s) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "10 s without {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process started with its stdout read line by line.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// Wait (at most 30 s) for the line `want`.
    fn wait_for_line(&self, want: &str) {
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|e| panic!("no {want}: {e}"));
            if line == want {
                return;
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A probe holding `chunks` GiB on GPU 0 until killed.
fn holder(chunks: u32) -> Command {
    let p = probes();
    let max = chunks.to_string();
    p.command(&p.runtime, &["fill", "--path", "alloc", "--chunk", "1G", "--max-chunks", &max, "--hold-forever"])
}

#[test]
fn running_processes_are_every_holder_with_all_it_holds() {
    let name = "running_processes_are_every_holder_with_all_it_holds";
    if !in_child(name) {
        return;
    }
    let nvml = nvml();
    assert_eq!(listed(&nvml), []);

    // This process holds 3 GiB through its own mapping; a probe holds 2 GiB and its context.
    let dir = std::env::var_os("FAKEGPU_STATE_DIR").unwrap();
    let mine = DeviceState::open(dir.as_ref(), 0, 80 * GIB).unwrap();
    mine.try_reserve(3 * GIB).unwrap();
    let probe = Running::start(holder(2));
    probe.wait_for_line("holding");
    let me = std::process::id();
    let other = probe.child.id();
    let mut want = vec![(me, 3 * GIB), (other, 2 * GIB + CONTEXT)];
    want.sort_unstable();
    assert_eq!(listed(&nvml), want);

    // The C ABI's buffer rules, for each version of the call.
    let lib = raw();
    let mut handle: nvmlDevice_t = ptr::null_mut();
    // SAFETY: zeroed process infos are valid values.
    let mut v2: [nvmlProcessInfo_v2_t; 3] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut v1: [nvmlProcessInfo_v1_t; 3] = unsafe { std::mem::zeroed() };
    let mut count: c_uint = 0;
    // SAFETY: live locals of the types nvml.h names, or deliberately null pointers.
    unsafe {
        assert_eq!(lib.nvmlInit_v2(), SUCCESS);
        assert_eq!(lib.nvmlDeviceGetHandleByIndex_v2(0, &mut handle), SUCCESS);
        // *infoCount = 0 asks for the count; infos may be null.
        assert_eq!(lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, &mut count, ptr::null_mut()), INSUFFICIENT_SIZE);
        assert_eq!(count, 2);
        count = 1;
        assert_eq!(lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, &mut count, v2.as_mut_ptr()), INSUFFICIENT_SIZE);
        assert_eq!(count, 2, "the count needed");
        count = 3;
        assert_eq!(lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, &mut count, v2.as_mut_ptr()), SUCCESS);
        assert_eq!(count, 2);
        let got: Vec<_> = v2[..2].iter().map(|p| (p.pid, p.usedGpuMemory)).collect();
        assert_eq!(got, want);
        assert!(v2[..2].iter().all(|p| (p.gpuInstanceId, p.computeInstanceId) == (0xFFFF_FFFF, 0xFFFF_FFFF)));
        count = 3;
        assert_eq!(lib.nvmlDeviceGetComputeRunningProcesses_v2(handle, &mut count, v2.as_mut_ptr()), SUCCESS);
        assert_eq!((count, v2[1].pid, v2[1].usedGpuMemory), (2, want[1].0, want[1].1));
        count = 3;
        assert_eq!(lib.nvmlDeviceGetComputeRunningProcesses(handle, &mut count, v1.as_mut_ptr()), SUCCESS);
        let got: Vec<_> = v1[..2].iter().map(|p| (p.pid, p.usedGpuMemory)).collect();
        assert_eq!((count, got), (2, want.clone()));
        assert_eq!(
            lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, ptr::null_mut(), v2.as_mut_ptr()),
            INVALID_ARGUMENT
        );
        count = 3;
        assert_eq!(lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, &mut count, ptr::null_mut()), INVALID_ARGUMENT);
        count = 3;
        assert_eq!(
            lib.nvmlDeviceGetComputeRunningProcesses_v3(ptr::null_mut(), &mut count, v2.as_mut_ptr()),
            INVALID_ARGUMENT
        );
        // No graphics on the simulated GPU: none, with the same rules.
        count = 0;
        assert_eq!(lib.nvmlDeviceGetGraphicsRunningProcesses_v3(handle, &mut count, ptr::null_mut()), SUCCESS);
        assert_eq!(count, 0);
        count = 3;
        assert_eq!(lib.nvmlDeviceGetGraphicsRunningProcesses_v2(handle, &mut count, v2.as_mut_ptr()), SUCCESS);
        assert_eq!(count, 0);
        assert_eq!(
            lib.nvmlDeviceGetGraphicsRunningProcesses(handle, ptr::null_mut(), v1.as_mut_ptr()),
            INVALID_ARGUMENT
        );
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
    }

    // A killed process is no longer listed, as its memory is freed.
    drop(probe);
    wait_until("the killed probe leaving the list", || listed(&nvml) == [(me, 3 * GIB)]);
    drop(mine);
    assert_eq!(listed(&nvml), []);
    // SAFETY: as above.
    unsafe {
        assert_eq!(lib.nvmlInit_v2(), SUCCESS);
        count = 0;
        assert_eq!(lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, &mut count, ptr::null_mut()), SUCCESS);
        assert_eq!(count, 0, "none running: success and a count of 0");
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
    }
}

/// The PID of the process `unshare --pid --fork` started, as this namespace names it.
fn forked_child_of(unshare: u32) -> u32 {
    let path = format!("/proc/{unshare}/task/{unshare}/children");
    let mut pid = None;
    wait_until("unshare's child", || {
        pid = std::fs::read_to_string(&path).ok().and_then(|s| s.split_whitespace().next()?.parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}

/// `cmd` run as PID 1 of a new PID namespace.
fn in_new_pid_namespace(cmd: &Command) -> Command {
    let mut outer = Command::new("unshare");
    outer.args(["--pid", "--fork", "--kill-child", "--"]).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => outer.env(k, v),
            None => outer.env_remove(k),
        };
    }
    outer
}

#[test]
fn processes_in_another_pid_namespace_are_named_by_the_askers_pids() {
    let name = "processes_in_another_pid_namespace_are_named_by_the_askers_pids";
    if gpuslice_test_support::skip_unless_root(name, "a new PID namespace (unshare --pid)")
        || gpuslice_test_support::skip_unless_program(name, "unshare")
        || !in_child(name)
    {
        return;
    }
    let nvml = nvml();
    // The probe is PID 1 in its namespace; NVML here must name it by the PID it has here.
    let probe = Running::start(in_new_pid_namespace(&holder(1)));
    probe.wait_for_line("holding");
    let host_pid = forked_child_of(probe.child.id());
    assert_ne!(host_pid, 1);
    assert_eq!(listed(&nvml), [(host_pid, GIB + CONTEXT)]);

    // Its kernels too: NVML's samples name it by the PID it has here.
    let p = probes();
    let work = p.command(&p.runtime, &["work", "--path", "kernel", "--kernel-ns", "1000000", "--seconds", "5"]);
    let worker = Running::start(in_new_pid_namespace(&work));
    let worker_pid = forked_child_of(worker.child.id());
    let dev = nvml.device_by_index(0).unwrap();
    wait_until("a utilisation sample of the worker", || {
        dev.process_utilization_stats(None).is_ok_and(|s| s.iter().any(|s| s.pid == worker_pid && s.sm_util > 0))
    });
    let samples = dev.process_utilization_stats(None).unwrap();
    assert!(samples.iter().all(|s| s.pid != 1), "a namespace's own PID leaked: {samples:?}");
    drop(worker);
    drop(probe);
    wait_until("the probes leaving the list", || listed(&nvml).is_empty());
}
