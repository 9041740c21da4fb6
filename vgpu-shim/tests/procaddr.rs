//! `cuGetProcAddress` through the shim, at every CUDA version the headers know, on simulated
//! drivers of CUDA 12 and 13: the shim hands out its wrapper only of the exact symbol the
//! driver chose.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use common::*;
use gpuslice_cuda_abi::proc::{NEWEST_VERSION, PER_THREAD_DEFAULT_STREAM, PROC_TABLE};

/// The driver symbols the built shim exports (its wrappers).
fn wrapped_symbols() -> BTreeSet<String> {
    let out = std::process::Command::new("nm").args(["-D", "--defined-only"]).arg(shim()).output().unwrap();
    assert!(out.status.success(), "nm -D {}", shim().display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("cu"))
        .map(str::to_owned)
        .collect()
}

/// One answer of the `procaddr` program.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    rc: i32,
    addr: String,
    object: String,
    symbol: String,
}

/// (name, version, flags, api) → answer, for `queries`, with or without the shim.
fn ask(node: &Node, queries: &str, shim: bool) -> BTreeMap<(String, i32, u64, String), Answer> {
    let program = c_program("procaddr");
    let mut cmd = if shim { node.command(&program, &["matrix"]) } else { node.bare(&program, &["matrix"]) };
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(queries.as_bytes()).unwrap();
    }
    let out = ok(child.wait_with_output().unwrap());
    stdout(&out)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 8, "{l}");
            let key = (f[0].to_owned(), f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].to_owned());
            let a = Answer { rc: f[4].parse().unwrap(), addr: f[5].into(), object: f[6].into(), symbol: f[7].into() };
            (key, a)
        })
        .collect()
}

#[test]
fn every_wrapped_function_at_every_version_is_the_drivers_answer_or_our_wrapper_of_that_symbol() {
    if skip_unless_root("every_wrapped_function_at_every_version_is_the_drivers_answer_or_our_wrapper_of_that_symbol") {
        return;
    }
    let wrapped = wrapped_symbols();
    // Every name one of whose variants we wrap, at 11.0, at the newest version the headers
    // know, and at every version where one of its variants appears and just below it.
    let mut versions: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
    for row in PROC_TABLE.iter().filter(|r| wrapped.contains(r.symbol())) {
        versions.entry(row.name()).or_default();
    }
    for row in PROC_TABLE {
        let Some(set) = versions.get_mut(row.name()) else { continue };
        set.extend([11000, NEWEST_VERSION]);
        set.extend([row.version, row.version - 10].into_iter().filter(|v| (11000..=NEWEST_VERSION).contains(v)));
    }
    assert!(versions.len() >= 30, "only {} wrapped names: {wrapped:?}", versions.len());
    let mut queries = String::new();
    for (name, vs) in &versions {
        for v in vs {
            for flags in [0, PER_THREAD_DEFAULT_STREAM] {
                queries += &format!("{name} {v} {flags}\n");
            }
        }
    }

    let mut checked = 0;
    let mut ours = 0;
    for driver in [12080, 12090, 13000, 13050] {
        let mut node = Node::at_cuda_version(driver);
        node.slice("slice0", UUID0, 0, 40 * GIB);
        let bare = ask(&node, &queries, false);
        let shimmed = ask(&node, &queries, true);
        assert_eq!(bare.len(), shimmed.len());
        for (key, got) in &shimmed {
            let want = &bare[key];
            assert_eq!(got.rc, want.rc, "driver {driver}: {key:?}");
            if got == want {
                checked += 1;
                continue;
            }
            // Not the driver's own answer: then our export of the very symbol the driver chose.
            assert_eq!(got.object, "libgpuslice.so", "driver {driver}: {key:?}: {got:?} instead of {want:?}");
            assert!(want.symbol != "-", "driver {driver}: {key:?}: the driver's answer {want:?} is no symbol");
            assert_eq!(got.symbol, want.symbol, "driver {driver}: {key:?}: our {got:?} for the driver's {want:?}");
            checked += 1;
            ours += 1;
        }
    }
    println!("{checked} answers checked, {ours} of them our wrappers");
    assert!(ours > 0, "the shim never handed out a wrapper");
}

#[test]
fn bug2_cuda13_cu_ctx_synchronize_of_another_context_waits_for_its_work() {
    if skip_unless_root("bug2_cuda13_cu_ctx_synchronize_of_another_context_waits_for_its_work") {
        return;
    }
    const KERNEL_NS: u64 = 300_000_000;
    let mut node = Node::at_cuda_version(13000);
    node.slice("slice0", UUID0, 0, 40 * GIB);
    let program = c_program("procaddr");
    let out = ok(node.command(&program, &["sync-other", "13000", &KERNEL_NS.to_string()]).output().unwrap());
    // The variant that takes a context, as the driver answers at 13000 ...
    assert_eq!(text_value(&out, "variant").as_deref(), Some("cuCtxSynchronize_v2"), "{}", stdout(&out));
    // ... which waited for the named context's kernel, not for the (idle) current one.
    let waited = value(&out, "waited_ns");
    assert!(waited >= KERNEL_NS * 8 / 10, "waited {waited} ns for a {KERNEL_NS} ns kernel: {}", stdout(&out));
}

/// Bug 5 (re-entry half): the shim loads the driver for its first call (`cuInit` found with
/// `dlsym(RTLD_DEFAULT)` before anything loaded `libcuda.so.1`), and the driver's constructor
/// calls one of its own exports, which the shim interposes. That call re-enters the shim while
/// its driver table is being loaded, and must reach the driver instead of waiting for the table.
#[test]
fn bug5_reentry_while_the_shim_loads_the_driver_reaches_the_real_symbol() {
    let node = Node::new();
    let mut cmd = node.bare(&c_program("procaddr"), &["call-init"]);
    cmd.env("LD_PRELOAD", shim()).env(fakegpu::cuda::CONSTRUCTOR_CALL_ENV, "cuMemGetInfo_v2");
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("deadlocked: still running after 30 s\nstderr: {}", stderr(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = ok(child.wait_with_output().unwrap());
    // The constructor's call reached the simulated driver (which answers it), and cuInit worked.
    assert!(stderr(&out).contains("fakegpu: constructor called cuMemGetInfo_v2: "), "{}", stderr(&out));
    assert_eq!(value(&out, "cuInit"), 0);
}
