//! The memory limit on the simulated GPU, through the real probe, the real shim and the real
//! region: every allocation path, every way of asking how much memory there is, every route
//! into the driver.

mod common;

use common::*;
use std::mem::offset_of;

use gpuslice_core::region::{Header, REGION_SIZE, RegionFile, Slot};
use gpuslice_core::units::ByteSize;

const LIMIT: u64 = 4 * GIB;
/// What the shim charges for a context; the simulated driver's contexts use the same.
const CONTEXT: u64 = 256 * MIB;

fn node_with_slice() -> Node {
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    node
}

#[test]
fn every_allocation_path_is_limited() {
    if skip_unless_root("every_allocation_path_is_limited") {
        return;
    }
    let node = node_with_slice();
    for (path, chunk) in [
        ("alloc", "256MiB"),
        ("pitch", "256MiB"),
        ("managed", "256MiB"),
        ("vmm", "256MiB"),
        ("async", "256MiB"),
        ("pool", "256MiB"),
        ("array", "256MiB"),
        ("array3d", "256MiB"),
        ("mipmap", "256MiB"),
    ] {
        let chunk_bytes = chunk.parse::<ByteSize>().unwrap().0;
        let out = node.probe(&["fill", "--path", path, "--chunk", &chunk_bytes.to_string()]);
        let text = stdout(&out);
        assert!(text.contains("CUDA_ERROR_OUT_OF_MEMORY"), "{path}: {text} {}", stderr(&out));
        let bytes = value(&out, "bytes");
        assert!(bytes + CONTEXT <= LIMIT, "{path}: {bytes} bytes allocated past the {LIMIT} limit");
        assert!(bytes + CONTEXT + chunk_bytes * 2 > LIMIT, "{path}: stopped early at {bytes} bytes");
        // The exited process's slot (its context charge) is reclaimed, as the next allocation
        // that needed the memory would.
        let region = node.region("slice0");
        region.reclaim_dead().unwrap();
        assert_eq!(region.usage().unwrap(), 0, "{path}: usage left after the process exited");
    }
}

#[test]
fn contexts_are_charged() {
    if skip_unless_root("contexts_are_charged") {
        return;
    }
    let node = node_with_slice();
    let out = node.probe(&["alloc", "--path", "ctx", "--size", "0", "--count", "64"]);
    let made = value(&out, "allocated");
    // 4 GiB holds the primary context plus 15 more.
    assert_eq!(made, LIMIT / CONTEXT - 1, "{}", stdout(&out));
    assert!(stdout(&out).contains("CUDA_ERROR_OUT_OF_MEMORY"));
}

#[test]
fn memory_views_show_the_slice() {
    if skip_unless_root("memory_views_show_the_slice") {
        return;
    }
    let node = node_with_slice();
    let out = ok(node.probe(&["meminfo"]));
    assert_eq!(value(&out, "total"), LIMIT);
    assert_eq!(value(&out, "device_total"), LIMIT);
    assert_eq!(value(&out, "free"), LIMIT - CONTEXT, "the probe's own context is in use");

    // Another process holds 1 GiB: everyone on the slice sees it.
    let mut holder =
        Reaper(vec![node.spawn_probe(&["alloc", "--path", "alloc", "--size", &GIB.to_string(), "--hold-forever"])]);
    wait_holding(&mut holder.0[0]);
    let out = ok(node.probe(&["meminfo"]));
    assert_eq!(value(&out, "free"), LIMIT - 2 * CONTEXT - GIB);
    let out = ok(node.probe(&["nvml-meminfo"]));
    assert_eq!(value(&out, "total"), LIMIT);
    assert_eq!(value(&out, "used"), CONTEXT + GIB, "NVML counts the slice's usage, the holder's context included");
    assert_eq!(value(&out, "free"), LIMIT - CONTEXT - GIB);
    assert_eq!(value(&out, "v2_total"), LIMIT);
    assert_eq!(value(&out, "v2_used") + value(&out, "v2_free") + value(&out, "v2_reserved"), LIMIT);
}

#[test]
fn free_never_exceeds_what_the_device_has() {
    if skip_unless_root("free_never_exceeds_what_the_device_has") {
        return;
    }
    // An overcommitted 100 GiB slice on an 80 GiB GPU.
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, 100 * GIB);
    let out = ok(node.probe(&["meminfo"]));
    assert_eq!(value(&out, "total"), 100 * GIB);
    assert!(value(&out, "free") <= 80 * GIB - CONTEXT, "{}", stdout(&out));
}

#[test]
fn every_route_into_the_driver_is_limited() {
    if skip_unless_root("every_route_into_the_driver_is_limited") {
        return;
    }
    let node = node_with_slice();
    let (runtime, direct) = probes();
    let chunk = (512 * MIB).to_string();
    let routes: Vec<(&str, std::process::Command)> = vec![
        ("cuGetProcAddress_v2 at 12080", node.command(runtime, &["fill", "--path", "alloc", "--chunk", &chunk])),
        (
            "cuGetProcAddress_v2 at 11040",
            node.command(runtime, &["--cuda-version", "11040", "fill", "--path", "alloc", "--chunk", &chunk]),
        ),
        ("per-thread stream", node.command(runtime, &["--ptsz", "fill", "--path", "async", "--chunk", &chunk])),
        ("dlsym", node.command(runtime, &["--dlsym", "fill", "--path", "alloc", "--chunk", &chunk])),
        ("direct linking", node.command(direct, &["fill", "--path", "alloc", "--chunk", &chunk])),
    ];
    for (route, mut cmd) in routes {
        let out = cmd.output().unwrap();
        assert!(stdout(&out).contains("CUDA_ERROR_OUT_OF_MEMORY"), "{route}: {} {}", stdout(&out), stderr(&out));
        let bytes = value(&out, "bytes");
        assert!(bytes + CONTEXT <= LIMIT && bytes + CONTEXT + 512 * MIB > LIMIT, "{route}: {bytes}");
        let out = ok(cmd_meminfo(&node, route));
        assert_eq!(value(&out, "total"), LIMIT, "{route}");
    }
}

fn cmd_meminfo(node: &Node, route: &str) -> std::process::Output {
    let (runtime, direct) = probes();
    match route {
        "dlsym" => node.command(runtime, &["--dlsym", "meminfo"]).output().unwrap(),
        "direct linking" => node.command(direct, &["meminfo"]).output().unwrap(),
        _ => node.command(runtime, &["meminfo"]).output().unwrap(),
    }
}

/// `name` → library basename, from the probe's `symbols` output (`name.lib=…`, by dladdr).
fn libraries(o: &std::process::Output) -> Vec<(String, String)> {
    stdout(o)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let name = k.strip_suffix(".lib")?;
            Some((name.to_owned(), v.rsplit('/').next().unwrap_or(v).to_owned()))
        })
        .collect()
}

const WRAPPED: &[&str] =
    &["cuMemAlloc", "cuMemGetInfo", "cuMemCreate", "cuCtxCreate", "cuLaunchKernel", "cuMemAllocAsync"];

#[test]
fn outside_a_slice_everything_passes_through() {
    let node = Node::new();
    // No slice in the state dir: the whole GPU, and the driver's own functions, on every route.
    let mut cmd = node.bare(&probes().0, &["meminfo"]);
    cmd.env("LD_PRELOAD", shim());
    assert_eq!(value(&ok(cmd.output().unwrap()), "total"), 80 * GIB);
    for mode in [&["symbols"][..], &["--dlsym", "symbols"], &["--ptsz", "symbols"]] {
        let mut cmd = node.bare(&probes().0, mode);
        cmd.env("LD_PRELOAD", shim());
        let out = ok(cmd.output().unwrap());
        let libs = libraries(&out);
        assert!(libs.len() >= WRAPPED.len(), "{}", stdout(&out));
        for (name, lib) in libs {
            assert!(!lib.contains("gpuslice"), "{mode:?}: {name} resolved into the shim outside a slice");
        }
    }
}

#[test]
fn inside_a_slice_the_intercepted_functions_are_ours() {
    if skip_unless_root("inside_a_slice_the_intercepted_functions_are_ours") {
        return;
    }
    let node = node_with_slice();
    for mode in
        [&["symbols"][..], &["--dlsym", "symbols"], &["--ptsz", "symbols"], &["--cuda-version", "11040", "symbols"]]
    {
        let out = ok(node.probe(mode));
        let libs = libraries(&out);
        for name in WRAPPED {
            let lib = &libs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not listed")).1;
            assert!(lib.contains("gpuslice"), "{mode:?}: {name} should resolve into the shim, got {lib}");
        }
        for (name, lib) in &libs {
            if !WRAPPED.contains(&name.as_str())
                && ["cuMemcpyHtoD", "cuStreamCreate", "cuModuleGetFunction"].contains(&name.as_str())
            {
                assert!(!lib.contains("gpuslice"), "{mode:?}: {name} is not intercepted and must be the driver's");
            }
        }
    }
}

#[test]
fn the_environment_can_only_lower_the_limit() {
    if skip_unless_root("the_environment_can_only_lower_the_limit") {
        return;
    }
    let node = node_with_slice();
    let mut cmd = node.command(&probes().0, &["meminfo"]);
    cmd.env("GPUSLICE_MEMORY_LIMIT", "2GiB");
    assert_eq!(value(&ok(cmd.output().unwrap()), "total"), 2 * GIB);
    let mut cmd = node.command(&probes().0, &["meminfo"]);
    cmd.env("GPUSLICE_MEMORY_LIMIT", "64GiB");
    assert_eq!(value(&ok(cmd.output().unwrap()), "total"), LIMIT, "raising is ignored");
}

#[test]
fn variables_cannot_hide_the_hooks_slices() {
    if skip_unless_root("variables_cannot_hide_the_hooks_slices") {
        return;
    }
    // The slice where the hook mounts it, and the container pointing the shim elsewhere.
    let mut node = node_with_slice();
    node.on_devices();
    for (key, val) in [("GPUSLICE_SLICES", "other"), ("GPUSLICE_STATE_DIR", "/nonexistent")] {
        let mut cmd = node.command_in_container(&probes().0, &["meminfo"]);
        cmd.env(key, val);
        assert_eq!(common::value(&ok(cmd.output().unwrap()), "total"), LIMIT, "{key}={val}");
    }
}

#[test]
fn a_forged_writable_limits_file_is_ignored() {
    // No mounts at all: a container writing its own /run/gpuslice gains nothing.
    let node = Node::new();
    let forged = node.view().join("slices/slice0");
    std::fs::create_dir_all(&forged).unwrap();
    let text = std::fs::read_to_string({
        node.write_limits("slice0", UUID0, 0, 200 * GIB);
        node.limits_path("slice0")
    })
    .unwrap();
    std::fs::write(forged.join("limits"), text).unwrap();
    let mut cmd = node.bare(&probes().0, &["meminfo"]);
    cmd.env("LD_PRELOAD", shim());
    let out = ok(cmd.output().unwrap());
    assert_eq!(value(&out, "total"), 80 * GIB, "the forged 200 GiB limit must not apply");
    assert!(!forged.join("region").exists(), "nothing joined");
}

#[test]
fn corrupt_or_truncated_state_fails_closed_with_one_line() {
    if skip_unless_root("corrupt_or_truncated_state_fails_closed_with_one_line") {
        return;
    }
    type Damage = Box<dyn Fn(&std::path::Path)>;
    let region_cases: Vec<(&str, Damage)> = vec![
        ("truncated region", Box::new(|p| std::fs::write(p, b"short").unwrap())),
        (
            "scribbled header",
            Box::new(|p| {
                let mut b = std::fs::read(p).unwrap();
                b[0..8].copy_from_slice(b"garbage!");
                std::fs::write(p, b).unwrap();
            }),
        ),
        (
            "bad slot state",
            Box::new(|p| {
                let mut b = std::fs::read(p).unwrap();
                let used = offset_of!(RegionFile, header) + offset_of!(Header, slots_used);
                b[used..used + 4].copy_from_slice(&3u32.to_ne_bytes());
                let state1 = offset_of!(RegionFile, slots) + size_of::<Slot>() + offset_of!(Slot, state);
                b[state1..state1 + 4].copy_from_slice(&9u32.to_ne_bytes());
                assert_eq!(b.len(), REGION_SIZE);
                std::fs::write(p, b).unwrap();
            }),
        ),
    ];
    for (what, damage) in region_cases {
        let node = node_with_slice();
        damage(&node.host().join("slices/slice0/region"));
        let out = node.probe(&["alloc", "--path", "alloc", "--size", &MIB.to_string()]);
        assert_eq!(out.status.code(), Some(1), "{what}: must fail with a CUDA error, not crash: {:?}", out.status);
        let err = stderr(&out);
        let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("gpuslice:")).collect();
        assert_eq!(ours.len(), 1, "{what}: one line from the shim: {err}");
        assert!(ours[0].contains("slice0") && ours[0].contains("region"), "{what}: {err}");
        assert!(err.contains("CUDA_ERROR_NOT_PERMITTED"), "{what}: {err}");
    }
    // A limits file on the read-only mount that is not limits.
    let node = node_with_slice();
    let partial = format!("format={}\nslice=slice0\n", gpuslice_core::limits::LIMITS_FORMAT);
    std::fs::write(node.limits_path("slice0"), partial).unwrap();
    let out = node.probe(&["meminfo"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("gpuslice:") && err.contains("missing"), "{err}");
}

#[test]
fn a_trusted_format_1_limits_file_fails_closed_asking_to_regenerate() {
    if skip_unless_root("a_trusted_format_1_limits_file_fails_closed_asking_to_regenerate") {
        return;
    }
    // Complete and valid as format 1 was, but without the compute policy format 2 requires.
    let node = node_with_slice();
    let v1 = format!(
        "format=1\nslice=slice0\nmode=shim\ngpu_uuid={UUID0}\ngpu_index=0\nmemory_bytes={}\ncores_percent=100\ngeneration=1\n",
        4 * GIB
    );
    std::fs::write(node.limits_path("slice0"), v1).unwrap();
    for args in [&["meminfo"][..], &["alloc", "--path", "alloc", "--size", &MIB.to_string()]] {
        let out = node.probe(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: must fail with a CUDA error: {:?}", out.status);
        let err = stderr(&out);
        let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("gpuslice:")).collect();
        assert_eq!(ours.len(), 1, "{args:?}: one line from the shim: {err}");
        assert!(ours[0].contains("format 1 is not supported") && ours[0].contains("regenerate"), "{err}");
        assert!(err.contains("CUDA_ERROR_NOT_PERMITTED"), "{args:?}: {err}");
    }
}

#[test]
fn a_new_generation_applies_to_running_processes() {
    if skip_unless_root("a_new_generation_applies_to_running_processes") {
        return;
    }
    let node = node_with_slice();
    // A process that fills the slice, then keeps trying to allocate more once a second.
    let child = node.spawn_probe(&[
        "fill",
        "--path",
        "alloc",
        "--chunk",
        &(GIB / 2).to_string(),
        "--retry-ms",
        "200",
        "--until-bytes",
        &(6 * GIB).to_string(),
    ]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let l = node.write_limits("slice0", UUID0, 0, 8 * GIB);
    assert_eq!(l.generation, 2);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{} {}", stdout(&out), stderr(&out));
    assert!(value(&out, "bytes") >= 6 * GIB, "{}", stdout(&out));
}

#[test]
fn a_panic_inside_the_shim_becomes_an_error_not_a_crash() {
    if skip_unless_root("a_panic_inside_the_shim_becomes_an_error_not_a_crash") {
        return;
    }
    let node = node_with_slice();
    let mut cmd = node.command(&probes().0, &["meminfo"]);
    cmd.env("GPUSLICE_TEST_PANIC", "cuInit");
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the probe must report a CUDA error, not die: {:?} {}",
        out.status,
        stderr(&out)
    );
    assert!(stderr(&out).contains("CUDA_ERROR_UNKNOWN"), "{}", stderr(&out));
    assert!(stderr(&out).contains("gpuslice: internal error"), "{}", stderr(&out));
}

#[test]
fn two_slices_on_two_gpus_each_hold_their_own_limit() {
    if skip_unless_root("two_slices_on_two_gpus_each_hold_their_own_limit") {
        return;
    }
    let mut node = Node::with_gpus(&[Gpu { uuid: UUID0, memory_gib: 80 }, Gpu { uuid: UUID1, memory_gib: 40 }]);
    node.slice("big", UUID0, 0, 4 * GIB).slice("small", UUID1, 1, 2 * GIB);
    let out = ok(node.probe(&["--device", "0", "meminfo"]));
    assert_eq!(value(&out, "total"), 4 * GIB);
    let out = ok(node.probe(&["--device", "1", "meminfo"]));
    assert_eq!(value(&out, "total"), 2 * GIB);
    let out = node.probe(&["--device", "1", "fill", "--path", "alloc", "--chunk", &(256 * MIB).to_string()]);
    assert_eq!(value(&out, "bytes"), 2 * GIB - CONTEXT, "{}", stdout(&out));
    let out = ok(node.probe(&["nvml-meminfo", "--index", "1"]));
    assert_eq!(value(&out, "total"), 2 * GIB);
    // Each slice's region holds only its own GPU's usage.
    let (big, small) = (node.region("big"), node.region("small"));
    big.reclaim_dead().unwrap();
    small.reclaim_dead().unwrap();
    assert_eq!((big.usage().unwrap(), small.usage().unwrap()), (0, 0));
}

#[test]
fn memory_the_shim_did_not_charge_is_the_drivers_business() {
    if skip_unless_root("memory_the_shim_did_not_charge_is_the_drivers_business") {
        return;
    }
    // GPU 1 is in no slice: its allocations are neither limited nor charged, and their frees
    // reach the driver.
    let mut node = Node::with_gpus(&[Gpu { uuid: UUID0, memory_gib: 80 }, Gpu { uuid: UUID1, memory_gib: 40 }]);
    node.slice("slice0", UUID0, 0, LIMIT);
    let out =
        ok(node.probe(&["--device", "1", "alloc", "--path", "alloc", "--size", &(10 * GIB).to_string(), "--free"]));
    assert_eq!(value(&out, "allocated"), 1);
    assert_eq!(value(&out, "freed"), 1);
    let out = ok(node.probe(&["--device", "1", "meminfo"]));
    assert_eq!(value(&out, "total"), 40 * GIB, "an unsliced GPU is shown whole");
    assert_eq!(node.device_used(1), 0, "the driver freed what the shim did not charge");
    assert_eq!(node.region("slice0").usage().unwrap(), 0, "nothing charged to the slice");
}
