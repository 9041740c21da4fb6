//! The simulated driver as an MPS client of the stand-in `nvidia-cuda-mps-control`: the
//! daemon's pinned memory limit and active thread percentage hold, a client's own variables
//! only lower them, and a dead daemon's socket fails `cuInit` as the real driver does.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, config_with, have_cc, keys, probes};
use fakegpu::timeline::DeviceTimeline;

const MIB: u64 = 1 << 20;
const CONTROL: &str = env!("CARGO_BIN_EXE_nvidia-cuda-mps-control");

struct Daemon {
    child: Child,
    pipe: std::path::PathBuf,
}

impl Daemon {
    fn start(pipe: &Path, log: &Path, thread: &str, pinned: &str) -> Daemon {
        let child = Command::new(CONTROL)
            .arg("-f")
            .env("CUDA_MPS_PIPE_DIRECTORY", pipe)
            .env("CUDA_MPS_LOG_DIRECTORY", log)
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while !pipe.join("control").exists() {
            assert!(Instant::now() < end, "the stand-in did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        let d = Daemon { child, pipe: pipe.to_owned() };
        d.control(&format!("set_default_active_thread_percentage {thread}"));
        d.control(&format!("set_default_device_pinned_mem_limit 0 {pinned}"));
        d
    }

    /// `echo <command> | nvidia-cuda-mps-control`.
    fn control(&self, command: &str) -> String {
        let pipe = &self.pipe;
        let mut c = Command::new(CONTROL)
            .env("CUDA_MPS_PIPE_DIRECTORY", pipe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(format!("{command}\n").as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{command}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn probe(fx: &Fixture, pipe: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let p = probes();
    let mut cmd = p.command(&p.runtime, args);
    cmd.env("FAKEGPU_CONFIG", &fx.config_path).env("FAKEGPU_STATE_DIR", &fx.state_dir);
    cmd.env("CUDA_MPS_PIPE_DIRECTORY", pipe).env_remove("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE");
    cmd.env_remove("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Bytes a probe got in 64 MiB allocations before the first failure, and that failure.
fn allocated(fx: &Fixture, pipe: &Path, env: &[(&str, &str)]) -> (u64, String) {
    let out = probe(fx, pipe, env, &["alloc", "--path", "alloc", "--size", "64M", "--count", "100"]);
    let k = keys(&out.stdout);
    let n: u64 = k.get("allocated").unwrap_or_else(|| panic!("{out:?}")).parse().unwrap();
    (n * 64 * MIB, k.get("error_name").cloned().unwrap_or_default())
}

#[test]
fn an_mps_client_is_held_to_the_daemons_limits_and_its_own_env_only_lowers_them() {
    let name = "an_mps_client_is_held_to_the_daemons_limits_and_its_own_env_only_lowers_them";
    if !have_cc(name) {
        return;
    }
    let fx = Fixture::new(&config_with(1, ""));
    let pipe = fx.dir.path().join("pipe");
    let log = fx.dir.path().join("log");
    let daemon = Daemon::start(&pipe, &log, "25", "1G");
    assert_eq!(daemon.control("get_default_active_thread_percentage").trim(), "25.0");

    // Pinned memory: the daemon's 1 GiB, whatever the client asks; lower when it asks lower.
    let (got, err) = allocated(&fx, &pipe, &[]);
    assert!((512 * MIB..=1 << 30).contains(&got), "{got}");
    assert_eq!(err, "CUDA_ERROR_OUT_OF_MEMORY");
    let (raised, _) = allocated(&fx, &pipe, &[("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=100G")]);
    assert_eq!(raised, got, "a client's own limit cannot raise the daemon's");
    let (lowered, err) = allocated(&fx, &pipe, &[("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=512M")]);
    assert!(lowered < got && lowered <= 512 * MIB, "{lowered} vs {got}");
    assert_eq!(err, "CUDA_ERROR_OUT_OF_MEMORY");

    // Compute: 25 % of the SMs makes each kernel four times as long on the shared timeline,
    // and a client's 100 % does not change that; its 10 % does.
    for (own, factor) in [(None, 4.0), (Some("100"), 4.0), (Some("10"), 10.0)] {
        let env: Vec<(&str, &str)> = own.iter().map(|v| ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", *v)).collect();
        let out = probe(
            &fx,
            &pipe,
            &env,
            &["work", "--path", "kernel", "--kernel-ns", "1000000", "--count", "20", "--echo-pid"],
        );
        let k = keys(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        let pid: u32 = k["pid"].parse().unwrap();
        let kernel_ns: u64 = k["kernel_ns"].parse().unwrap();
        let tl = DeviceTimeline::open(&fx.state_dir, 0).unwrap();
        let busy: u64 = tl.by_process(0, u64::MAX).iter().filter(|p| p.pid == pid).map(|p| p.busy_ns).sum();
        let ratio = busy as f64 / kernel_ns as f64;
        assert!((ratio - factor).abs() < 0.01, "own {own:?}: device time {busy} for {kernel_ns} of kernels");
    }
    let clients = std::fs::read_to_string(pipe.join("clients")).unwrap();
    assert!(clients.lines().count() >= 6, "every probe connected: {clients}");
    drop(daemon);

    // The daemon died without `quit`: its socket is left, and cuInit fails as the real driver's.
    let out = probe(&fx, &pipe, &[], &["info"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("cuInit failed: 805 CUDA_ERROR_MPS_CONNECTION_FAILED"), "{out:?}");

    // No daemon at all (no socket): the process uses the GPU directly, without MPS limits.
    std::fs::remove_file(pipe.join("control")).unwrap();
    let (direct, _) = allocated(&fx, &pipe, &[]);
    assert!(direct > got, "{direct} vs {got}");
}

/// `cuMemGetInfo` shows an MPS client its pinned limit as the total (lowered by its own
/// variable), and what it may still allocate under it as free; `cuDeviceTotalMem` keeps the
/// device's size.
#[test]
fn an_mps_client_sees_its_pinned_limit_in_mem_get_info() {
    let name = "an_mps_client_sees_its_pinned_limit_in_mem_get_info";
    if !have_cc(name) {
        return;
    }
    let fx = Fixture::new(&config_with(1, ""));
    let pipe = fx.dir.path().join("pipe");
    let log = fx.dir.path().join("log");
    let _daemon = Daemon::start(&pipe, &log, "100", "1G");
    for (env, limit) in [(vec![], 1u64 << 30), (vec![("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=512M")], 512 * MIB)] {
        let out = probe(&fx, &pipe, &env, &["meminfo"]);
        assert!(out.status.success(), "{out:?}");
        let k = keys(&out.stdout);
        let num = |key: &str| -> u64 { k.get(key).unwrap_or_else(|| panic!("{key}: {out:?}")).parse().unwrap() };
        assert_eq!(num("total"), limit, "{out:?}");
        assert!(num("free") > 0 && num("free") <= limit, "{out:?}");
        assert!(num("device_total") > limit, "cuDeviceTotalMem keeps the device's size: {out:?}");
    }
}
