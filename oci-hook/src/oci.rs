//! What the runtime hands the hook: the container's state on standard input (OCI runtime spec,
//! "State") and, through it, the bundle whose `config.json` names the rootfs.
//!
//! Both come from the runtime, not from the image, but they are still parsed with bounds: a
//! state larger than any runtime writes, or a `config.json` without a root, is an error that
//! stops the container. Of `config.json` only `root` is read; the container's process,
//! environment and mounts are none of the hook's business, and fields a newer engine adds
//! cannot break it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{ContainerState, Root, State};
use serde::Deserialize;

/// Largest state accepted on standard input. Runtimes write a few hundred bytes plus the
/// container's annotations.
pub const MAX_STATE_LEN: u64 = 1 << 20;
/// Largest `config.json` accepted.
pub const MAX_CONFIG_LEN: u64 = 16 << 20;

/// Why the runtime's description of the container cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("reading the container state on standard input: {0}")]
    ReadState(#[source] io::Error),
    #[error("the container state on standard input is larger than {MAX_STATE_LEN} bytes")]
    StateTooLarge,
    #[error("no container state on standard input (the hook is run by the container runtime, which writes it there)")]
    EmptyState,
    #[error("the container state on standard input is not OCI state JSON: {0}")]
    BadState(#[source] serde_json::Error),
    #[error("the container state on standard input has no {0}")]
    Missing(&'static str),
    #[error("the container state's bundle {0:?} is not an absolute path")]
    RelativeBundle(PathBuf),
    #[error("reading the bundle's {path:?}: {source}")]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("the bundle's {path:?} is larger than {MAX_CONFIG_LEN} bytes")]
    ConfigTooLarge { path: PathBuf },
    #[error("the bundle's {path:?} is not an OCI runtime config: {source}")]
    BadConfig { path: PathBuf, source: serde_json::Error },
    #[error("the bundle's {path:?} has no root.path")]
    NoRoot { path: PathBuf },
}

/// The container, as the state on standard input describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Absolute path of the bundle directory.
    pub bundle: PathBuf,
    pub status: ContainerState,
    /// The container's first process, as the host names it (runtimes give it from `created`
    /// on, so at `createContainer`; `poststop` may have none).
    pub pid: Option<u32>,
    /// The container's annotations (engines put names there: Kubernetes' pod and container).
    pub annotations: BTreeMap<String, String>,
}

/// Reads and checks the state the runtime writes to a hook's standard input.
pub fn read_state(input: impl Read) -> Result<Container, OciError> {
    let bytes = read_bounded(input, MAX_STATE_LEN).map_err(OciError::ReadState)?.ok_or(OciError::StateTooLarge)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(OciError::EmptyState);
    }
    let state: State = serde_json::from_slice(&bytes).map_err(OciError::BadState)?;
    if state.id().is_empty() {
        return Err(OciError::Missing("id"));
    }
    if state.bundle().as_os_str().is_empty() {
        return Err(OciError::Missing("bundle"));
    }
    if !state.bundle().is_absolute() {
        return Err(OciError::RelativeBundle(state.bundle().clone()));
    }
    let pid = state.pid().and_then(|p| u32::try_from(p).ok()).filter(|&p| p > 0);
    let annotations = state.annotations().clone().unwrap_or_default().into_iter().collect();
    Ok(Container { id: state.id().clone(), bundle: state.bundle().clone(), status: *state.status(), pid, annotations })
}

/// The part of `config.json` the hook reads.
#[derive(Debug, Deserialize)]
struct BundleConfig {
    root: Option<Root>,
}

/// The host path of the container's rootfs: `root.path` of the bundle's `config.json`,
/// relative to the bundle unless absolute.
pub fn rootfs_path(bundle: &Path) -> Result<PathBuf, OciError> {
    let path = bundle.join("config.json");
    let read_error = |source| OciError::ReadConfig { path: path.clone(), source };
    let file = File::open(&path).map_err(read_error)?;
    let bytes = read_bounded(file, MAX_CONFIG_LEN)
        .map_err(read_error)?
        .ok_or_else(|| OciError::ConfigTooLarge { path: path.clone() })?;
    let config: BundleConfig =
        serde_json::from_slice(&bytes).map_err(|source| OciError::BadConfig { path: path.clone(), source })?;
    let root = config.root.map(|r| r.path().clone()).filter(|p| !p.as_os_str().is_empty());
    let root = root.ok_or_else(|| OciError::NoRoot { path: path.clone() })?;
    Ok(if root.is_absolute() { root } else { bundle.join(root) })
}

/// Everything `input` holds, or `None` if that is more than `max` bytes.
fn read_bounded(input: impl Read, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    input.take(max + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(json: &str) -> Result<Container, OciError> {
        read_state(json.as_bytes())
    }

    #[test]
    fn reads_the_state_runc_writes() {
        let c = state(
            r#"{"ociVersion":"1.0.2","id":"abc","status":"creating","pid":42,"bundle":"/b","annotations":{"k":"v"}}"#,
        )
        .unwrap();
        let annotations = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let want = Container {
            id: "abc".into(),
            bundle: "/b".into(),
            status: ContainerState::Creating,
            pid: Some(42),
            annotations,
        };
        assert_eq!(c, want);
        let c = state(r#"{"ociVersion":"1.0.2","id":"abc","status":"stopped","bundle":"/b"}"#).unwrap();
        assert_eq!((c.pid, c.annotations.len()), (None, 0), "poststop may have neither");
    }

    #[test]
    fn refuses_bad_states() {
        assert!(matches!(state(""), Err(OciError::EmptyState)));
        assert!(matches!(state("  \n"), Err(OciError::EmptyState)));
        assert!(matches!(state("{"), Err(OciError::BadState(_))));
        assert!(matches!(state("[]"), Err(OciError::BadState(_) | OciError::Missing("id"))));
        assert!(matches!(state(r#"{"bundle":"/b"}"#), Err(OciError::Missing("id"))));
        assert!(matches!(state(r#"{"id":"x"}"#), Err(OciError::Missing("bundle"))));
        assert!(matches!(state(r#"{"id":"x","bundle":"rel"}"#), Err(OciError::RelativeBundle(_))));
        assert!(matches!(state(r#"{"id":"x","bundle":"/b","status":"sleeping"}"#), Err(OciError::BadState(_))));
        let huge = format!(r#"{{"id":"x","bundle":"/b","pad":"{}"}}"#, "a".repeat(MAX_STATE_LEN as usize));
        assert!(matches!(state(&huge), Err(OciError::StateTooLarge)));
    }

    #[test]
    fn finds_the_rootfs() {
        let bundle = tempfile::tempdir().unwrap();
        let write = |json: &str| std::fs::write(bundle.path().join("config.json"), json).unwrap();
        write(r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},"process":{"env":["X=1"]}}"#);
        assert_eq!(rootfs_path(bundle.path()).unwrap(), bundle.path().join("rootfs"));
        write(r#"{"root":{"path":"/var/lib/x/merged"},"somethingNew":{"a":1}}"#);
        assert_eq!(rootfs_path(bundle.path()).unwrap(), PathBuf::from("/var/lib/x/merged"));
        write(r#"{"process":{}}"#);
        assert!(matches!(rootfs_path(bundle.path()), Err(OciError::NoRoot { .. })));
        write(r#"{"root":{"path":""}}"#);
        assert!(matches!(rootfs_path(bundle.path()), Err(OciError::NoRoot { .. })));
        write("not json");
        assert!(matches!(rootfs_path(bundle.path()), Err(OciError::BadConfig { .. })));
        let missing = bundle.path().join("gone");
        assert!(matches!(rootfs_path(&missing), Err(OciError::ReadConfig { .. })));
    }
}
