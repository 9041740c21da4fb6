//! The slice a hook runs for: its limits from the hook's arguments, and its state on the host.
//!
//! After a reboot `/run` is empty, yet the CDI spec still names the slice. So the spec passes
//! the hook everything the slice is (mode, GPU, memory, cores, cores policy, priority), and
//! `create-container` rewrites the limits file and recreates the region when they are missing;
//! it never depends on state having survived. A hook given only `--slice` (a hand-written
//! bundle) uses the state that is there.

use std::io;
use std::path::PathBuf;

use gpuslice_core::board::{self, Board, BoardError};
use gpuslice_core::config::Mode;
use gpuslice_core::limits::{self, Limits, LimitsError};
use gpuslice_core::region::{self, Region, RegionError};

/// Where slice state lives on the host unless the spec says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/gpuslice";

/// The slice as the hook's arguments describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceArgs {
    pub name: String,
    pub state_dir: PathBuf,
    pub mode: Option<String>,
    pub gpu_uuid: Option<String>,
    pub gpu_index: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub cores_percent: Option<u32>,
    /// `cap` or `borrow`.
    pub cores_policy: Option<String>,
    /// `normal` or `high`.
    pub priority: Option<String>,
}

/// Why the slice cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    #[error("{0:?} is not a slice name (letters, digits, `_.:-`, starting and ending with a letter or digit)")]
    BadName(String),
    #[error("{slice}: the hook was given {given} but not {missing}; regenerate the spec with gpuslice-cdi generate")]
    Incomplete { slice: String, given: String, missing: String },
    #[error("{slice}: {source}; regenerate the spec with gpuslice-cdi generate")]
    BadLimits { slice: String, source: LimitsError },
    #[error(
        "unknown slice {slice}: {path:?} does not exist and the hook was not given the slice's limits; run gpuslice-cdi generate"
    )]
    Unknown { slice: String, path: PathBuf },
    #[error("{slice}: {path:?} names slice {found}")]
    WrongSlice { slice: String, path: PathBuf, found: String },
    #[error("{slice}: writing its limits under {state_dir:?}: {source}")]
    Store { slice: String, state_dir: PathBuf, source: io::Error },
    #[error("{slice}: {source}")]
    Region { slice: String, source: RegionError },
    #[error("{slice}: {source}")]
    Board { slice: String, source: BoardError },
}

impl SliceArgs {
    /// The limits the arguments describe, when they describe them completely.
    pub fn limits(&self) -> Result<Option<Limits>, SliceError> {
        let given = [
            ("--mode", self.mode.is_some()),
            ("--gpu-uuid", self.gpu_uuid.is_some()),
            ("--gpu-index", self.gpu_index.is_some()),
            ("--memory-bytes", self.memory_bytes.is_some()),
            ("--cores-percent", self.cores_percent.is_some()),
            ("--cores-policy", self.cores_policy.is_some()),
            ("--priority", self.priority.is_some()),
        ];
        let names = |present: bool| given.iter().filter(|g| g.1 == present).map(|g| g.0).collect::<Vec<_>>().join(" ");
        match given.iter().filter(|g| g.1).count() {
            0 => return Ok(None),
            n if n < given.len() => {
                return Err(SliceError::Incomplete {
                    slice: self.name.clone(),
                    given: names(true),
                    missing: names(false),
                });
            }
            _ => {}
        }
        // Written out and read back, so the arguments pass exactly the checks a limits file does.
        let text = format!(
            "format={}\nslice={}\nmode={}\ngpu_uuid={}\ngpu_index={}\nmemory_bytes={}\ncores_percent={}\n\
             cores_policy={}\npriority={}\ngeneration=1\n",
            limits::LIMITS_FORMAT,
            self.name,
            self.mode.as_deref().unwrap_or_default(),
            self.gpu_uuid.as_deref().unwrap_or_default(),
            self.gpu_index.unwrap_or_default(),
            self.memory_bytes.unwrap_or_default(),
            self.cores_percent.unwrap_or_default(),
            self.cores_policy.as_deref().unwrap_or_default(),
            self.priority.as_deref().unwrap_or_default(),
        );
        Limits::parse(&text).map(Some).map_err(|source| SliceError::BadLimits { slice: self.name.clone(), source })
    }

    fn check_name(&self) -> Result<(), SliceError> {
        gpuslice_core::cdi::validate_device_name(&self.name).map_err(|_| SliceError::BadName(self.name.clone()))
    }

    /// `<state_dir>/slices/<name>`.
    pub fn dir(&self) -> PathBuf {
        limits::slice_dir(&self.state_dir, &self.name)
    }
}

/// A slice whose state exists on the host.
#[derive(Debug)]
pub struct Slice {
    pub limits: Limits,
    /// `<state_dir>/slices/<name>`, mounted read-only into the container.
    pub dir: PathBuf,
    /// The region of a slice in mode `shim`.
    pub region: Option<Region>,
    /// The board of the slice's GPU, for a slice in mode `shim`.
    pub board: Option<Board>,
}

impl Slice {
    pub fn name(&self) -> &str {
        &self.limits.slice
    }

    /// The slice as the hook's arguments describe it, with its state written (limits) and
    /// created (region) where missing.
    pub fn ensure(args: &SliceArgs) -> Result<Slice, SliceError> {
        args.check_name()?;
        let limits = match args.limits()? {
            Some(wanted) => wanted.store(&args.state_dir).map_err(|source| SliceError::Store {
                slice: args.name.clone(),
                state_dir: args.state_dir.clone(),
                source,
            })?,
            None => Self::load_limits(args)?,
        };
        let (region, board) = match limits.mode {
            Mode::Shim => {
                let region = Region::open_or_create(&region::region_path(&args.state_dir, &args.name))
                    .map_err(|source| SliceError::Region { slice: args.name.clone(), source })?;
                let board_error = |source| SliceError::Board { slice: args.name.clone(), source };
                let board = Board::open_or_create(&board::board_path(&args.state_dir, &limits.gpu_uuid))
                    .map_err(board_error)?;
                board.claim(&limits.slice, limits.priority, limits.cores_percent).map_err(board_error)?;
                (Some(region), Some(board))
            }
            Mode::None => (None, None),
        };
        Ok(Slice { limits, dir: args.dir(), region, board })
    }

    /// The slice's region if it has one and it exists; never creates anything (for `poststop`).
    pub fn existing_region(args: &SliceArgs) -> Result<Option<Region>, SliceError> {
        args.check_name()?;
        let path = region::region_path(&args.state_dir, &args.name);
        if !path.exists() {
            return Ok(None);
        }
        Region::open(&path).map(Some).map_err(|source| SliceError::Region { slice: args.name.clone(), source })
    }

    fn load_limits(args: &SliceArgs) -> Result<Limits, SliceError> {
        let path = limits::limits_path(&args.state_dir, &args.name);
        let limits = match Limits::load(&path) {
            Ok(limits) => limits,
            Err(LimitsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(SliceError::Unknown { slice: args.name.clone(), path });
            }
            Err(source) => return Err(SliceError::BadLimits { slice: args.name.clone(), source }),
        };
        if limits.slice != args.name {
            return Err(SliceError::WrongSlice { slice: args.name.clone(), path, found: limits.slice });
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use gpuslice_core::config::{CoresPolicy, Priority};

    use super::*;

    fn args(state_dir: &Path) -> SliceArgs {
        SliceArgs {
            name: "slice0".into(),
            state_dir: state_dir.to_owned(),
            mode: Some("shim".into()),
            gpu_uuid: Some("GPU-6a3f1d2e-0000-4e2a-9c1b-000000000000".into()),
            gpu_index: Some(0),
            memory_bytes: Some(4 << 30),
            cores_percent: Some(50),
            cores_policy: Some("cap".into()),
            priority: Some("normal".into()),
        }
    }

    #[test]
    fn recreates_missing_state_from_the_arguments() {
        let state = tempfile::tempdir().unwrap();
        let slice = Slice::ensure(&args(state.path())).unwrap();
        assert_eq!(slice.limits.memory_bytes, 4 << 30);
        assert_eq!(slice.limits.generation, 1);
        assert!(slice.region.is_some());
        assert!(state.path().join("slices/slice0/region").is_file());
        // Again: nothing changes, the generation stays.
        assert_eq!(Slice::ensure(&args(state.path())).unwrap().limits.generation, 1);
        // New limits in the spec: a new generation.
        let bigger = SliceArgs { memory_bytes: Some(8 << 30), ..args(state.path()) };
        assert_eq!(Slice::ensure(&bigger).unwrap().limits.generation, 2);
        // A new policy or priority is new limits too.
        let borrow = SliceArgs { cores_policy: Some("borrow".into()), ..bigger.clone() };
        let slice = Slice::ensure(&borrow).unwrap();
        assert_eq!((slice.limits.cores_policy, slice.limits.generation), (CoresPolicy::Borrow, 3));
        let high = SliceArgs { priority: Some("high".into()), ..borrow };
        let slice = Slice::ensure(&high).unwrap();
        assert_eq!((slice.limits.priority, slice.limits.generation), (Priority::High, 4));
        let text = std::fs::read_to_string(state.path().join("slices/slice0/limits")).unwrap();
        assert!(text.contains("\ncores_policy=borrow\npriority=high\n"), "{text}");
    }

    #[test]
    fn only_a_name_uses_the_state_that_is_there() {
        let state = tempfile::tempdir().unwrap();
        let bare = SliceArgs { name: "slice0".into(), state_dir: state.path().to_owned(), ..SliceArgs::default() };
        let err = Slice::ensure(&bare).unwrap_err().to_string();
        assert!(err.starts_with("unknown slice slice0:") && err.ends_with("run gpuslice-cdi generate"), "{err}");
        Slice::ensure(&args(state.path())).unwrap();
        assert_eq!(Slice::ensure(&bare).unwrap().limits.cores_percent, 50);
    }

    #[test]
    fn mode_none_has_no_region() {
        let state = tempfile::tempdir().unwrap();
        let whole = SliceArgs { name: "gpu0".into(), mode: Some("none".into()), ..args(state.path()) };
        assert!(Slice::ensure(&whole).unwrap().region.is_none());
        assert!(!state.path().join("slices/gpu0/region").exists());
    }

    #[test]
    fn bad_arguments_are_refused_before_anything_is_written() {
        let state = tempfile::tempdir().unwrap();
        let cases = [
            (SliceArgs { name: "../etc".into(), ..args(state.path()) }, "is not a slice name"),
            (SliceArgs { name: "".into(), ..args(state.path()) }, "is not a slice name"),
            (SliceArgs { gpu_index: None, ..args(state.path()) }, "but not --gpu-index"),
            (SliceArgs { cores_policy: None, ..args(state.path()) }, "but not --cores-policy"),
            (SliceArgs { priority: None, ..args(state.path()) }, "but not --priority"),
            (SliceArgs { cores_policy: Some("share".into()), ..args(state.path()) }, "`cores_policy` = `share`"),
            (SliceArgs { priority: Some("low".into()), ..args(state.path()) }, "`priority` = `low`"),
            (SliceArgs { mode: Some("mig".into()), ..args(state.path()) }, "mode"),
            (SliceArgs { cores_percent: Some(0), ..args(state.path()) }, "cores_percent"),
            (SliceArgs { gpu_uuid: Some("GPU-../../x".into()), ..args(state.path()) }, "gpu_uuid"),
        ];
        for (bad, expected) in cases {
            let err = Slice::ensure(&bad).unwrap_err().to_string();
            assert!(err.contains(expected), "{bad:?}: {err}");
        }
        assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_corrupt_limits_file_is_reported() {
        let state = tempfile::tempdir().unwrap();
        Slice::ensure(&args(state.path())).unwrap();
        std::fs::write(state.path().join("slices/slice0/limits"), "garbage\n").unwrap();
        let bare = SliceArgs { name: "slice0".into(), state_dir: state.path().to_owned(), ..SliceArgs::default() };
        let err = Slice::ensure(&bare).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        // The spec's arguments repair it.
        Slice::ensure(&args(state.path())).unwrap();
        Slice::ensure(&bare).unwrap();
    }
}
