//! The slice a hook runs for: its limits from the hook's arguments, and its state on the host.
//!
//! The spec passes the hook everything the slice is (mode, GPU, memory, cores, cores policy,
//! priority), and `create-container` rewrites the limits file when it is missing or differs. A
//! hook given only `--slice` (a hand-written bundle) uses the limits that are there.
//!
//! The slice's region and its GPU's board are zram devices that only `gpuslice-cdi generate`
//! makes (`gpuslice_core::state`), since the container's device cgroup must let it open them
//! and the engine reads the devices from the host's nodes when it creates the container, before
//! the hook runs. So the hook never creates them: state that is missing or not a device (a
//! reboot the `gpuslice-generate` service has not followed yet, an older release's files) stops
//! the container with one line saying to run `gpuslice-cdi generate`. What it does mend is
//! damaged contents, in place ([`Region::open_repairing`], [`Board::open_repairing`]), so that
//! a container that scribbled on them cannot keep the slice's next containers from starting. The
//! board is advisory: one the hook cannot open or claim a record on does not stop anything.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpuslice_core::board::{self, Board, BoardError};
use gpuslice_core::config::Mode;
use gpuslice_core::limits::{self, Limits, LimitsError};
use gpuslice_core::region::{self, Region, RegionError};

/// Where slice state lives on the host unless the spec says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/gpuslice";
/// How long `create-container` waits for the region's lock (to repair it and record the
/// container) before refusing the start: its holders keep it for microseconds, unless a process
/// on the slice keeps it on purpose.
pub const CREATE_LOCK_WAIT: Duration = Duration::from_secs(2);
/// How long `poststop` waits for it before leaving its cleanup to the next reclaim.
pub const POSTSTOP_LOCK_WAIT: Duration = Duration::from_millis(250);

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
    #[error(
        "{slice}: its shared state {path:?} is {what}; run gpuslice-cdi generate (the gpuslice-generate service does at boot)"
    )]
    NoState { slice: String, path: PathBuf, what: &'static str },
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

    /// The slice as the hook's arguments describe it: its limits written where missing or
    /// different, its region (for a slice in mode `shim`) opened and repaired if damaged, its
    /// GPU's board opened, repaired and the slice's record claimed if it can be.
    pub fn ensure(args: &SliceArgs) -> Result<Slice, SliceError> {
        args.check_name()?;
        let wanted = args.limits()?;
        let mode = match &wanted {
            Some(l) => l.mode,
            None => Self::load_limits(args)?.mode,
        };
        // The devices first: a refusal for missing state writes nothing.
        let region = match mode {
            Mode::Shim => Some(Self::open_region(args)?),
            Mode::None | Mode::Mig => None,
        };
        let limits = match wanted {
            Some(wanted) => wanted.store(&args.state_dir).map_err(|source| SliceError::Store {
                slice: args.name.clone(),
                state_dir: args.state_dir.clone(),
                source,
            })?,
            None => Self::load_limits(args)?,
        };
        let board = match mode {
            Mode::Shim => Self::open_board(args, &limits),
            Mode::None | Mode::Mig => None,
        };
        Ok(Slice { limits, dir: args.dir(), region, board })
    }

    /// The slice's region: a device node at its path, repaired in place if damaged.
    fn open_region(args: &SliceArgs) -> Result<Region, SliceError> {
        let path = region::region_path(&args.state_dir, &args.name);
        require_device(&args.name, &path)?;
        let (region, _) = Region::open_repairing(&path, CREATE_LOCK_WAIT)
            .map_err(|source| SliceError::Region { slice: args.name.clone(), source })?;
        Ok(region)
    }

    /// The GPU's board with the slice's record claimed, when it can be had: the board only
    /// informs pacing, so nothing about it stops the container.
    fn open_board(args: &SliceArgs, limits: &Limits) -> Option<Board> {
        let path = board::board_path(&args.state_dir, &limits.gpu_uuid);
        require_device(&args.name, &path).ok()?;
        let (board, _) = Board::open_repairing(&path).ok()?;
        let _ = board.claim(&limits.slice, limits.priority, limits.cores_percent);
        Some(board)
    }

    /// The slice's region if it has one and it exists; never creates or repairs anything (for
    /// `poststop`), and waits for its lock at most [`POSTSTOP_LOCK_WAIT`].
    pub fn existing_region(args: &SliceArgs) -> Result<Option<Region>, SliceError> {
        args.check_name()?;
        let path = region::region_path(&args.state_dir, &args.name);
        if !path.exists() {
            return Ok(None);
        }
        Region::open(&path)
            .map(|r| Some(r.with_lock_wait(POSTSTOP_LOCK_WAIT)))
            .map_err(|source| SliceError::Region { slice: args.name.clone(), source })
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

/// Refuses state that is not a block device node: missing, or a plain file of an older release.
fn require_device(slice: &str, path: &Path) -> Result<(), SliceError> {
    let no_state = |what| Err(SliceError::NoState { slice: slice.to_owned(), path: path.to_owned(), what });
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_block_device() => Ok(()),
        Ok(_) => no_state("not a device (an older release's file?)"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => no_state("missing"),
        Err(_) => no_state("unreadable"),
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

    /// What `generate` makes for slice0: limits, and its region and its GPU's board on zram
    /// devices. Removes the devices when dropped.
    struct Generated(tempfile::TempDir);

    impl Generated {
        fn new() -> Option<Generated> {
            if gpuslice_test_support::skip_unless_root("slice state on zram devices", "adding zram devices") {
                return None;
            }
            let state = tempfile::tempdir().unwrap();
            let limits = args(state.path()).limits().unwrap().unwrap().store(state.path()).unwrap();
            gpuslice_core::state::ensure_region(state.path(), "slice0").unwrap();
            let slices = [board::BoardSlice { name: "slice0".into(), priority: limits.priority, cores: 50 }];
            gpuslice_core::state::ensure_board(state.path(), &limits.gpu_uuid, &slices, 1).unwrap();
            Some(Generated(state))
        }
    }

    impl Drop for Generated {
        fn drop(&mut self) {
            gpuslice_core::state::remove_devices(self.0.path());
        }
    }

    #[test]
    fn limits_follow_the_arguments_on_generated_state() {
        let Some(state) = Generated::new() else { return };
        let state = state.0.path();
        let slice = Slice::ensure(&args(state)).unwrap();
        assert_eq!(slice.limits.memory_bytes, 4 << 30);
        assert_eq!(slice.limits.generation, 1);
        assert!(slice.region.as_ref().unwrap().is_device() && slice.board.as_ref().unwrap().is_device());
        // Again: nothing changes, the generation stays.
        assert_eq!(Slice::ensure(&args(state)).unwrap().limits.generation, 1);
        // New limits in the spec: a new generation.
        let bigger = SliceArgs { memory_bytes: Some(8 << 30), ..args(state) };
        assert_eq!(Slice::ensure(&bigger).unwrap().limits.generation, 2);
        // A new policy or priority is new limits too.
        let borrow = SliceArgs { cores_policy: Some("borrow".into()), ..bigger.clone() };
        let slice = Slice::ensure(&borrow).unwrap();
        assert_eq!((slice.limits.cores_policy, slice.limits.generation), (CoresPolicy::Borrow, 3));
        let high = SliceArgs { priority: Some("high".into()), ..borrow };
        let slice = Slice::ensure(&high).unwrap();
        assert_eq!((slice.limits.priority, slice.limits.generation), (Priority::High, 4));
        let text = std::fs::read_to_string(state.join("slices/slice0/limits")).unwrap();
        assert!(text.contains("\ncores_policy=borrow\npriority=high\n"), "{text}");
    }

    #[test]
    fn a_damaged_region_and_board_are_repaired_at_the_next_start() {
        use std::os::unix::fs::FileExt;
        let Some(state) = Generated::new() else { return };
        let state = state.0.path();
        let scribble = |path: PathBuf| {
            std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(b"scribble", 0).unwrap();
        };
        scribble(region::region_path(state, "slice0"));
        let uuid = args(state).gpu_uuid.unwrap();
        scribble(board::board_path(state, &uuid));
        assert!(Region::open(&region::region_path(state, "slice0")).is_err());
        let slice = Slice::ensure(&args(state)).unwrap();
        slice.region.unwrap().check_header().unwrap();
        assert_eq!(slice.board.unwrap().slices().len(), 1);
    }

    #[test]
    fn missing_or_plain_file_state_is_refused_asking_for_generate_and_writes_nothing() {
        let state = tempfile::tempdir().unwrap();
        let err = Slice::ensure(&args(state.path())).unwrap_err().to_string();
        assert!(err.contains("region\" is missing; run gpuslice-cdi generate"), "{err}");
        assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0, "nothing written");
        // A plain file where the device should be: an older release's region.
        std::fs::create_dir_all(state.path().join("slices/slice0")).unwrap();
        Region::create(&state.path().join("slices/slice0/region")).unwrap();
        let err = Slice::ensure(&args(state.path())).unwrap_err().to_string();
        assert!(err.contains("is not a device") && err.contains("run gpuslice-cdi generate"), "{err}");
        assert!(!state.path().join("slices/slice0/limits").exists());
    }

    #[test]
    fn only_a_name_uses_the_state_that_is_there() {
        let state = tempfile::tempdir().unwrap();
        let bare = SliceArgs { name: "gpu0".into(), state_dir: state.path().to_owned(), ..SliceArgs::default() };
        let err = Slice::ensure(&bare).unwrap_err().to_string();
        assert!(err.starts_with("unknown slice gpu0:") && err.ends_with("run gpuslice-cdi generate"), "{err}");
        let whole = SliceArgs { name: "gpu0".into(), mode: Some("none".into()), ..args(state.path()) };
        Slice::ensure(&whole).unwrap();
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
    fn mode_mig_has_no_region_and_keeps_its_limits() {
        let state = tempfile::tempdir().unwrap();
        let mig = SliceArgs { name: "mig0-1".into(), mode: Some("mig".into()), ..args(state.path()) };
        let slice = Slice::ensure(&mig).unwrap();
        assert!(slice.region.is_none() && slice.board.is_none());
        assert_eq!(slice.limits.mode, Mode::Mig);
        assert!(!state.path().join("slices/mig0-1/region").exists());
        assert!(!state.path().join("gpus").exists(), "no board for a MIG device");
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
            (SliceArgs { mode: Some("vgpu".into()), ..args(state.path()) }, "mode"),
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
        let whole = SliceArgs { name: "gpu0".into(), mode: Some("none".into()), ..args(state.path()) };
        Slice::ensure(&whole).unwrap();
        std::fs::write(state.path().join("slices/gpu0/limits"), "garbage\n").unwrap();
        let bare = SliceArgs { name: "gpu0".into(), state_dir: state.path().to_owned(), ..SliceArgs::default() };
        let err = Slice::ensure(&bare).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        // The spec's arguments repair it.
        Slice::ensure(&whole).unwrap();
        Slice::ensure(&bare).unwrap();
    }
}
