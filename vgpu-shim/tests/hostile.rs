//! A container that attacks its slice's state, against the interception library: the slices
//! mounted as the hook mounts them (a read-only tmpfs whose source is `gpuslice`, regions and
//! boards on zram devices), the attack run inside that view before the probe. Root only (mount
//! namespaces, zram devices); the end-to-end tier runs the same attacks through Docker
//! (`tests/e2e/test_hostile_tenant.sh`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: u64 = 40 * GIB;

/// A 40 GiB slice on an 80 GiB GPU, its state on devices.
fn node_on_devices(test: &str) -> Option<Node> {
    if skip_unless_root(test) || gpuslice_test_support::skip_unless_root(test, "adding zram devices") {
        return None;
    }
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    node.on_devices();
    Some(node)
}

/// A directory under the node's temporary directory, standing for the container's root
/// filesystem where the attacks move things around.
fn container_dir(node: &Node) -> PathBuf {
    let dir = node.dir.path().join("ctr");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    dir
}

/// The probe's allocation past the limit was refused as out of memory.
fn assert_over_limit(out: &std::process::Output) {
    assert_eq!(
        text_value(out, "error_name").as_deref(),
        Some("CUDA_ERROR_OUT_OF_MEMORY"),
        "{}\n{}",
        stdout(out),
        stderr(out)
    );
}

/// `mv /run/gpuslice …` and `mv /run …`: the library finds the hook's mount wherever it is
/// (through mountinfo), and the mount point itself cannot be renamed.
#[test]
fn moving_the_state_directory_changes_nothing() {
    let Some(node) = node_on_devices("moving_the_state_directory_changes_nothing") else { return };
    let ctr = container_dir(&node);
    let prelude = format!(
        "if mv '{c}/run/gpuslice' '{c}/run/x' 2>/dev/null; then echo renamed; exit 9; fi\nmv '{c}/run' '{c}/moved'\n",
        c = ctr.display()
    );
    let at = ctr.join("run");
    for args in [&["meminfo"][..], &["alloc", "--path", "alloc", "--size", "41G"]] {
        let out = node.command_in_container_after(&prelude, &at, &probes().0, args).output().unwrap();
        assert_ne!(out.status.code(), Some(9), "the state's mount point was renamed");
        if args[0] == "meminfo" {
            assert_eq!(value(&ok(out), "total"), LIMIT, "the slice after moving its parent directory");
        } else {
            assert_over_limit(&out);
        }
    }
}

/// A forged slice for the same GPU on a read-only mount (an image, a `:ro` volume), named to
/// sort first and pointed at with GPUSLICE_STATE_DIR: the hook's slice still wins.
#[test]
fn a_forged_read_only_slice_does_not_beat_the_hooks() {
    let Some(node) = node_on_devices("a_forged_read_only_slice_does_not_beat_the_hooks") else { return };
    let forged = node.dir.path().join("forged");
    let limits = node.write_limits("aaa", UUID0, 0, 80 * GIB);
    std::fs::create_dir_all(forged.join("slices/aaa")).unwrap();
    std::fs::write(forged.join("slices/aaa/limits"), limits.render().replace("slice=slice0", "slice=aaa")).unwrap();
    gpuslice_core::region::Region::create(&forged.join("slices/aaa/region")).unwrap();
    std::fs::remove_dir_all(node.host().join("slices/aaa")).unwrap();
    let prelude = format!("mount --bind '{f}' '{f}'\nmount -o remount,bind,ro '{f}'\n", f = forged.display());
    for args in [&["meminfo"][..], &["alloc", "--path", "alloc", "--size", "41G"]] {
        let mut cmd = node.command_in_container_after(&prelude, Path::new("/run"), &probes().0, args);
        cmd.env("GPUSLICE_STATE_DIR", &forged);
        let out = cmd.output().unwrap();
        if args[0] == "meminfo" {
            assert_eq!(value(&ok(out), "total"), LIMIT, "the forged 80 GiB slice must not apply");
        } else {
            assert_over_limit(&out);
        }
    }
}

/// A slice directory that is a symlink (which could be swapped after it was checked) is never
/// followed: everything is opened once, relative to descriptors.
#[test]
fn a_symlinked_slice_directory_is_not_followed() {
    if skip_unless_root("a_symlinked_slice_directory_is_not_followed") {
        return;
    }
    let mut node = Node::new();
    node.slice("slice0", UUID0, 0, LIMIT);
    // GPUSLICE_STATE_DIR's slices/slice0 is a link to the read-only view of the real one.
    let dir = node.dir.path().join("linked");
    std::fs::create_dir_all(dir.join("slices")).unwrap();
    std::os::unix::fs::symlink(node.view().join("slices/slice0"), dir.join("slices/slice0")).unwrap();
    let mut cmd = node.command(&probes().0, &["meminfo"]);
    cmd.env("GPUSLICE_STATE_DIR", &dir);
    assert_eq!(value(&ok(cmd.output().unwrap()), "total"), 80 * GIB, "no slice: the link was not followed");
}

/// `truncate` and a write past the end of the region, from inside: both fail, and a slice-mate
/// holding memory keeps running (on a plain file it died of SIGBUS at its next touch).
#[test]
fn the_region_can_be_neither_truncated_nor_grown() {
    let Some(node) = node_on_devices("the_region_can_be_neither_truncated_nor_grown") else { return };
    let mut reaper = Reaper(Vec::new());
    let mut mate = node
        .command_in_container(
            &probes().0,
            &["fill", "--path", "alloc", "--chunk", "1G", "--max-chunks", "4", "--hold-forever"],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_holding(&mut mate);
    reaper.0.push(mate);
    let region = "/run/gpuslice/slices/slice0/region";
    let attack = format!(
        "if truncate -s 0 {region} 2>/dev/null; then echo truncated; fi\n\
         if dd if=/dev/zero of={region} bs=4096 count=256 seek=17 conv=notrunc 2>/dev/null; then echo grown; fi\n"
    );
    let out = node.command_in_container_after(&attack, Path::new("/run"), &probes().0, &["meminfo"]).output().unwrap();
    let text = stdout(&out);
    assert!(!text.contains("truncated") && !text.contains("grown"), "{text}");
    assert_eq!(value(&out, "total"), LIMIT);
    assert!(value(&out, "free") <= LIMIT - 4 * GIB, "the mate's 4 GiB still count: {text}");
    // The mate is alive and still holding.
    let mate = &mut reaper.0[0];
    assert!(mate.try_wait().unwrap().is_none(), "the slice-mate died");
    assert_eq!(
        std::fs::metadata(node.host().join("slices/slice0/region")).map(|m| m.len()).unwrap(),
        0,
        "a device node"
    );
}

/// A process on the slice that keeps the region's lock: an allocation elsewhere fails after its
/// deadline with one line, instead of hanging; joining and memory queries do not need it.
#[test]
fn a_held_region_lock_fails_allocations_at_a_deadline() {
    let Some(node) = node_on_devices("a_held_region_lock_fails_allocations_at_a_deadline") else { return };
    let region =
        std::fs::OpenOptions::new().read(true).write(true).open(node.host().join("slices/slice0/region")).unwrap();
    let _held = gpuslice_core::shm::lock::lock(&region, 0..1).unwrap();
    let start = Instant::now();
    let out = node.command_in_container(&probes().0, &["alloc", "--path", "alloc", "--size", "1G"]).output().unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("gpuslice:")).collect();
    assert_eq!(ours.len(), 1, "{err}");
    assert!(ours[0].contains("its lock stayed held by another process"), "{err}");
    assert!(err.contains("CUDA_ERROR_NOT_PERMITTED"), "{err}");
    // NVML's view needs no context (whose 256 MiB would be a charge): it joins and reads
    // without the lock, at once.
    let out = ok(node.command_in_container(&probes().0, &["nvml-meminfo", "--index", "0"]).output().unwrap());
    assert_eq!(value(&out, "total"), LIMIT);
    assert!(!stderr(&out).contains("lock"), "it waited for the lock: {}", stderr(&out));
}
