//! Fault injection: one call held inside the driver, as a slow or blocked driver call would
//! be, so tests can check what other threads (and gpuslice's interception library) do
//! meanwhile.
//!
//! `FAKEGPU_HOLD=<export>[:<n>]` names an exported function of the CUDA driver API or NVML
//! (`cuMemFree_v2`, `cuDevicePrimaryCtxRetain`, `nvmlDeviceGetUUID`, …) and which of its calls in the process to hold (1-based,
//! default the first); `FAKEGPU_HOLD_DIR` is a directory the test watches. That call does
//! its work, then creates `<dir>/<export>.held` and does not return until
//! `<dir>/<export>.release` exists (polled every millisecond). A test that forgets to release
//! it does not hang the process for ever: after [`HOLD_LIMIT`] the call returns anyway, with
//! one line on stderr. The driver's own lock is not held meanwhile: other calls proceed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Which export, and which of its calls, to hold.
pub const HOLD_ENV: &str = "FAKEGPU_HOLD";
/// Where the `.held` and `.release` files are.
pub const HOLD_DIR_ENV: &str = "FAKEGPU_HOLD_DIR";
/// The longest a call is held.
pub const HOLD_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Hold {
    export: String,
    nth: u64,
    dir: PathBuf,
    calls: AtomicU64,
}

fn parse(spec: &str, dir: Option<PathBuf>) -> Result<Hold, String> {
    let (export, nth) = match spec.split_once(':') {
        Some((e, n)) => (e, n.parse::<u64>().ok().filter(|&n| n > 0).ok_or("the call number must be 1 or more")?),
        None => (spec, 1),
    };
    if export.is_empty() || !export.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("expected the name of an exported function".into());
    }
    let dir = dir.ok_or(format!("{HOLD_DIR_ENV} is not set"))?;
    Ok(Hold { export: export.to_owned(), nth, dir, calls: AtomicU64::new(0) })
}

fn configured() -> Option<&'static Hold> {
    static HOLD: OnceLock<Option<Hold>> = OnceLock::new();
    HOLD.get_or_init(|| {
        let spec = std::env::var(HOLD_ENV).ok()?;
        parse(&spec, std::env::var_os(HOLD_DIR_ENV).map(PathBuf::from))
            .map_err(|e| eprintln!("fakegpu: ignoring {HOLD_ENV}={spec}: {e}"))
            .ok()
    })
    .as_ref()
}

/// Called by every export once its work is done: holds the call `FAKEGPU_HOLD` names.
pub(crate) fn after(export: &str) {
    let Some(hold) = configured() else { return };
    if hold.export != export || hold.calls.fetch_add(1, Ordering::AcqRel) + 1 != hold.nth {
        return;
    }
    wait(&hold.dir, export);
}

fn wait(dir: &Path, export: &str) {
    let held = dir.join(format!("{export}.held"));
    let release = dir.join(format!("{export}.release"));
    if let Err(e) = std::fs::write(&held, b"") {
        eprintln!("fakegpu: {HOLD_ENV}: cannot create {}: {e}; not holding {export}", held.display());
        return;
    }
    let deadline = Instant::now() + HOLD_LIMIT;
    while !release.exists() {
        if Instant::now() >= deadline {
            eprintln!(
                "fakegpu: {HOLD_ENV}: {} did not appear within {HOLD_LIMIT:?}; {export} returns",
                release.display()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let dir = Some(PathBuf::from("/tmp/x"));
        let h = parse("cuMemFree_v2", dir.clone()).unwrap();
        assert_eq!((h.export.as_str(), h.nth), ("cuMemFree_v2", 1));
        assert_eq!(parse("cuMemAlloc_v2:3", dir.clone()).unwrap().nth, 3);
        assert!(parse("cuMemAlloc_v2:0", dir.clone()).is_err());
        assert!(parse("cuMemAlloc_v2:x", dir.clone()).is_err());
        assert!(parse("../etc", dir.clone()).is_err());
        assert!(parse("", dir).is_err());
        assert!(parse("cuInit", None).unwrap_err().contains(HOLD_DIR_ENV));
    }

    #[test]
    fn a_held_call_returns_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let waiter = std::thread::spawn(move || wait(&path, "cuTest"));
        let held = dir.path().join("cuTest.held");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !held.exists() {
            assert!(Instant::now() < deadline, "never held");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!waiter.is_finished());
        std::fs::write(dir.path().join("cuTest.release"), b"").unwrap();
        waiter.join().unwrap();
    }
}
