//! The node daemon's MPS control daemons, run against the simulated GPU's stand-in for
//! `nvidia-cuda-mps-control`: started with the GPU's ceiling, started again when killed,
//! stopped with `quit`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gpuslice_cdi::mps::{Supervisor, control};
use gpuslice_core::config::{CoresPolicy, Mode, Priority};
use gpuslice_core::limits::Limits;
use gpuslice_core::mps;

/// The stand-in, built with the workspace (`cargo build -p fakegpu`).
fn stand_in() -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent()?.parent()?.join("nvidia-cuda-mps-control");
    if path.exists() {
        Some(path)
    } else {
        println!("skipped: {} not built (cargo build -p fakegpu)", path.display());
        None
    }
}

fn slice(state: &Path, name: &str, mode: Mode, gpu: &str, memory_bytes: u64, cores_percent: u32) {
    Limits {
        slice: name.into(),
        mode,
        gpu_uuid: gpu.into(),
        gpu_index: 0,
        memory_bytes,
        cores_percent,
        cores_policy: CoresPolicy::Cap,
        priority: Priority::Normal,
        generation: 1,
    }
    .store(state)
    .unwrap();
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks the PID.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const GPU: &str = "GPU-00000000-2222-3333-4444-555555555555";

#[test]
fn a_daemon_per_mps_gpu_with_its_ceiling_restarted_when_killed_and_quit_on_stop() {
    let Some(bin) = stand_in() else { return };
    let state = tempfile::tempdir().unwrap();
    slice(state.path(), "slice0", Mode::Mps, GPU, 1 << 30, 25);
    slice(state.path(), "slice1", Mode::Mps, GPU, 2 << 30, 50);
    slice(state.path(), "slice2", Mode::Shim, "GPU-1", 4 << 30, 100);
    let mut sup = Supervisor::new(bin.clone(), state.path().to_owned());
    let lines = sup.tick(Instant::now());
    assert!(lines.is_empty(), "{lines:?}");
    let st = sup.statuses();
    assert_eq!(st.len(), 1, "one daemon, for the one GPU in mode mps: {st:?}");
    let pid = st[0].pid.unwrap();
    assert!(st[0].running && alive(pid));
    let pipe = mps::pipe_dir(state.path(), GPU);
    assert_eq!(control(&bin, &pipe, "get_default_active_thread_percentage").unwrap(), "50.0", "the largest slice");
    assert_eq!(control(&bin, &pipe, "get_default_device_pinned_mem_limit 0").unwrap(), "2048M");
    let log = std::fs::read_to_string(mps::log_dir(state.path(), GPU).join("control.log")).unwrap();
    assert!(log.contains(&format!("CUDA_VISIBLE_DEVICES={GPU}")), "{log}");
    let status = mps::DaemonStatus::load(state.path(), GPU).unwrap();
    assert_eq!((status.running, status.pid, status.restarts), (true, Some(pid), 0));

    // Killed: seen dead at the next tick, started again after the backoff, limits set again.
    // SAFETY: plain kill(2) of the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    until("the daemon to be started again", Duration::from_secs(10), || {
        sup.tick(Instant::now());
        sup.statuses()[0].restarts == 1 && sup.statuses()[0].running
    });
    let again = sup.statuses()[0].pid.unwrap();
    assert_ne!(again, pid);
    assert_eq!(control(&bin, &pipe, "get_default_active_thread_percentage").unwrap(), "50.0");
    assert_eq!(mps::DaemonStatus::load(state.path(), GPU).unwrap().restarts, 1);

    // A slice's limits change: the new ceiling reaches the running daemon.
    slice(state.path(), "slice1", Mode::Mps, GPU, 3 << 30, 75);
    sup.tick(Instant::now());
    assert_eq!(control(&bin, &pipe, "get_default_active_thread_percentage").unwrap(), "75.0");
    assert_eq!(sup.statuses()[0].pid, Some(again), "not restarted for new limits");

    // Stopped cleanly: `quit`, the daemon exits and removes its control socket.
    sup.stop_all();
    until("the daemon to exit", Duration::from_secs(5), || !alive(again));
    let log = std::fs::read_to_string(mps::log_dir(state.path(), GPU).join("control.log")).unwrap();
    assert!(log.contains("Command quit"), "{log}");
    assert!(!pipe.join("control").exists());
    assert!(!mps::DaemonStatus::load(state.path(), GPU).unwrap().running);
}

#[test]
fn a_gpu_leaving_mode_mps_has_its_daemon_quit_and_a_failing_daemon_is_retried() {
    let Some(bin) = stand_in() else { return };
    let state = tempfile::tempdir().unwrap();
    slice(state.path(), "slice0", Mode::Mps, GPU, 1 << 30, 25);
    let mut sup = Supervisor::new(bin.clone(), state.path().to_owned());
    sup.tick(Instant::now());
    let pid = sup.statuses()[0].pid.unwrap();
    slice(state.path(), "slice0", Mode::Shim, GPU, 1 << 30, 25);
    let lines = sup.tick(Instant::now());
    assert!(lines.iter().any(|l| l.contains("stopped (quit)")), "{lines:?}");
    until("the daemon to exit", Duration::from_secs(5), || !alive(pid));
    assert!(sup.statuses().is_empty());

    // A control binary that is not there: one line, and another try after the backoff.
    let mut broken = Supervisor::new(state.path().join("missing"), state.path().to_owned());
    slice(state.path(), "slice0", Mode::Mps, GPU, 1 << 30, 25);
    let now = Instant::now();
    let lines = broken.tick(now);
    assert!(lines.len() == 1 && lines[0].contains("trying again in 1s"), "{lines:?}");
    assert!(broken.tick(now).is_empty(), "nothing before the backoff ends");
    let lines = broken.tick(now + Duration::from_secs(1));
    assert!(lines.len() == 1 && lines[0].contains("trying again in 2s"), "{lines:?}");
    let st = &broken.statuses()[0];
    assert!(!st.running && st.last_error.as_deref().is_some_and(|e| e.contains("starting")), "{st:?}");
}
