//! The `limits` file: one slice's limits, written by the host and read by the hook and shim.
//!
//! It lives at `<state_dir>/slices/<name>/limits` and is mounted read-only into containers.
//! The format is plain `key=value` lines so that the interception library can read it with
//! no parser behind it; comments start with `#`. Format 2:
//!
//! ```text
//! # gpuslice slice limits; written by gpuslice-cdi, do not edit
//! format=2
//! slice=slice0
//! mode=shim
//! gpu_uuid=GPU-11111111-2222-3333-4444-555555555555
//! gpu_index=0
//! memory_bytes=42949672960
//! cores_percent=50
//! cores_policy=cap
//! priority=normal
//! generation=1
//! ```
//!
//! A MIG device's file (`mode=mig`) names its parent GPU in `gpu_uuid`, its instance's memory
//! in `memory_bytes` and its SMs' share of the GPU's in `cores_percent`, `cores_policy=cap`,
//! `priority=normal`: a record of what the hardware enforces, read by `status`, never by an
//! interception library (a MIG device has none).
//!
//! Format 2 added `cores_policy` and `priority`; a format 1 file is refused like any other
//! format, so that nothing runs under a policy it did not ask for.
//!
//! Every key is required, none may repeat and unknown keys are refused: the file is small,
//! host-written and security-relevant, so anything unexpected is an error, never a guess.
//! `generation` grows by one each time the writer changes any other value, so a running
//! process can notice new limits by comparing it.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::{CoresPolicy, Mode, Priority};
use crate::fsutil;

/// The format this code writes and reads.
pub const LIMITS_FORMAT: u32 = 2;
/// Largest limits file accepted; anything bigger is not ours.
pub const MAX_LIMITS_LEN: u64 = 4096;

/// One slice's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub slice: String,
    pub mode: Mode,
    pub gpu_uuid: String,
    pub gpu_index: u32,
    /// Device memory the slice may hold, in bytes.
    pub memory_bytes: u64,
    /// Share of the GPU's compute, in percent (1–100).
    pub cores_percent: u32,
    /// Whether `cores_percent` is a cap or a share that may borrow idle compute.
    pub cores_policy: CoresPolicy,
    /// Whether the GPU's normal slices yield to this one while it is busy.
    pub priority: Priority,
    /// Grows whenever any other value changes.
    pub generation: u64,
}

/// Why a limits file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: larger than {MAX_LIMITS_LEN} bytes")]
    TooLarge { path: PathBuf },
    #[error("line {line}: expected key=value, found `{text}`")]
    Syntax { line: usize, text: String },
    #[error("line {line}: unknown key `{key}`")]
    UnknownKey { line: usize, key: String },
    #[error("line {line}: `{key}` given twice")]
    Repeated { line: usize, key: String },
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("`{key}` = `{value}` is not valid: {reason}")]
    Value { key: &'static str, value: String, reason: &'static str },
    #[error(
        "format {0} is not supported (this gpuslice reads format {LIMITS_FORMAT}); regenerate with this version's gpuslice-cdi"
    )]
    Format(u32),
}

const KEYS: [&str; 10] = [
    "format",
    "slice",
    "mode",
    "gpu_uuid",
    "gpu_index",
    "memory_bytes",
    "cores_percent",
    "cores_policy",
    "priority",
    "generation",
];

impl Limits {
    /// Reads a limits file's text.
    pub fn parse(text: &str) -> Result<Self, LimitsError> {
        let mut values: [Option<&str>; KEYS.len()] = [None; KEYS.len()];
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(LimitsError::Syntax { line: n + 1, text: line.chars().take(64).collect() });
            };
            let key = key.trim();
            let Some(slot) = KEYS.iter().position(|k| *k == key) else {
                return Err(LimitsError::UnknownKey { line: n + 1, key: key.chars().take(64).collect() });
            };
            if values[slot].replace(value.trim()).is_some() {
                return Err(LimitsError::Repeated { line: n + 1, key: key.to_owned() });
            }
        }
        let get = |i: usize| values[i].ok_or(LimitsError::Missing(KEYS[i]));
        let number = |i: usize| -> Result<u64, LimitsError> {
            let v = get(i)?;
            v.parse().map_err(|_| LimitsError::Value {
                key: KEYS[i],
                value: v.to_owned(),
                reason: "not a whole number",
            })
        };
        let format = number(0)?;
        if format != u64::from(LIMITS_FORMAT) {
            return Err(LimitsError::Format(u32::try_from(format).unwrap_or(u32::MAX)));
        }
        let slice = get(1)?;
        crate::cdi::validate_device_name(slice).map_err(|_| LimitsError::Value {
            key: "slice",
            value: slice.to_owned(),
            reason: "not a slice name",
        })?;
        let mode = match get(2)? {
            "shim" => Mode::Shim,
            "none" => Mode::None,
            "mig" => Mode::Mig,
            other => {
                return Err(LimitsError::Value {
                    key: "mode",
                    value: other.to_owned(),
                    reason: "expected shim, none or mig",
                });
            }
        };
        let gpu_uuid = get(3)?;
        if gpu_uuid.is_empty()
            || gpu_uuid.len() > 96
            || !gpu_uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(LimitsError::Value { key: "gpu_uuid", value: gpu_uuid.to_owned(), reason: "not a GPU UUID" });
        }
        let gpu_index = u32::try_from(number(4)?).map_err(|_| LimitsError::Value {
            key: "gpu_index",
            value: get(4).unwrap_or_default().to_owned(),
            reason: "too large",
        })?;
        let cores_percent = number(6)?;
        if !(1..=100).contains(&cores_percent) {
            return Err(LimitsError::Value {
                key: "cores_percent",
                value: cores_percent.to_string(),
                reason: "must be 1 to 100",
            });
        }
        Ok(Limits {
            slice: slice.to_owned(),
            mode,
            gpu_uuid: gpu_uuid.to_owned(),
            gpu_index,
            memory_bytes: number(5)?,
            cores_percent: cores_percent as u32,
            cores_policy: keyword(7, get(7)?, &CoresPolicy::ALL, "expected cap or borrow")?,
            priority: keyword(8, get(8)?, &Priority::ALL, "expected normal or high")?,
            generation: number(9)?,
        })
    }

    /// The file's text.
    pub fn render(&self) -> String {
        format!(
            "# gpuslice slice limits; written by gpuslice-cdi, do not edit\n\
             format={LIMITS_FORMAT}\nslice={}\nmode={}\ngpu_uuid={}\ngpu_index={}\n\
             memory_bytes={}\ncores_percent={}\ncores_policy={}\npriority={}\ngeneration={}\n",
            self.slice,
            self.mode,
            self.gpu_uuid,
            self.gpu_index,
            self.memory_bytes,
            self.cores_percent,
            self.cores_policy,
            self.priority,
            self.generation
        )
    }

    /// Reads a limits file, refusing anything larger than a limits file can be.
    pub fn load(path: &Path) -> Result<Self, LimitsError> {
        let io_err = |source| LimitsError::Io { path: path.to_owned(), source };
        let text = fsutil::read_bounded(path, MAX_LIMITS_LEN).map_err(io_err)?;
        let text = text.ok_or_else(|| LimitsError::TooLarge { path: path.to_owned() })?;
        Self::parse(&text)
    }

    /// Whether two limits agree on everything but the generation.
    pub fn same_limits(&self, other: &Limits) -> bool {
        Limits { generation: 0, ..self.clone() } == Limits { generation: 0, ..other.clone() }
    }

    /// Writes these limits for their slice under `state_dir`, atomically with mode 0644.
    ///
    /// The generation is the previous file's when nothing changed and one more when
    /// something did (or `self.generation` if that is higher), so readers see a change as a
    /// new generation and an unchanged rewrite as none. Returns what was written.
    pub fn store(&self, state_dir: &Path) -> io::Result<Limits> {
        let path = limits_path(state_dir, &self.slice);
        let previous = Limits::load(&path).ok();
        let generation = match &previous {
            Some(old) if old.same_limits(self) => old.generation.max(self.generation),
            Some(old) => (old.generation + 1).max(self.generation),
            None => self.generation.max(1),
        };
        let limits = Limits { generation, ..self.clone() };
        if previous.as_ref() != Some(&limits) {
            fsutil::create_dir_all_mode(path.parent().unwrap_or(state_dir), 0o755)?;
            fsutil::write_atomic(&path, limits.render().as_bytes(), 0o644)?;
        }
        Ok(limits)
    }
}

/// One of a few words, as `Display` writes them.
fn keyword<T: Copy + std::fmt::Display>(
    i: usize,
    value: &str,
    all: &[T],
    reason: &'static str,
) -> Result<T, LimitsError> {
    all.iter().copied().find(|t| t.to_string() == value).ok_or_else(|| LimitsError::Value {
        key: KEYS[i],
        value: value.to_owned(),
        reason,
    })
}

/// `<state_dir>/slices`.
pub fn slices_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("slices")
}

/// `<state_dir>/slices/<name>`.
pub fn slice_dir(state_dir: &Path, slice: &str) -> PathBuf {
    slices_dir(state_dir).join(slice)
}

/// `<state_dir>/slices/<name>/limits`.
pub fn limits_path(state_dir: &Path, slice: &str) -> PathBuf {
    slice_dir(state_dir, slice).join("limits")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Limits {
        Limits {
            slice: "slice0".into(),
            mode: Mode::Shim,
            gpu_uuid: "GPU-11111111-2222-3333-4444-555555555555".into(),
            gpu_index: 0,
            memory_bytes: 40 << 30,
            cores_percent: 50,
            cores_policy: CoresPolicy::Borrow,
            priority: Priority::High,
            generation: 1,
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(Limits::parse(&sample().render()).unwrap(), sample());
        let defaults = Limits { cores_policy: CoresPolicy::Cap, priority: Priority::Normal, ..sample() };
        assert_eq!(Limits::parse(&defaults.render()).unwrap(), defaults);
    }

    #[test]
    fn a_mig_device_round_trips() {
        let mig =
            Limits { slice: "mig0-1".into(), mode: Mode::Mig, memory_bytes: 10 << 30, cores_percent: 12, ..sample() };
        assert!(mig.render().contains("\nmode=mig\n"));
        assert_eq!(Limits::parse(&mig.render()).unwrap(), mig);
    }

    #[test]
    fn renders_format_2_with_the_policy_keys() {
        let text = sample().render();
        assert!(text.contains("\nformat=2\n"), "{text}");
        assert!(text.contains("\ncores_percent=50\ncores_policy=borrow\npriority=high\ngeneration=1\n"), "{text}");
    }

    #[test]
    fn a_format_1_file_is_refused_with_regenerate() {
        let v1 = "format=1\nslice=slice0\nmode=shim\ngpu_uuid=GPU-11111111-2222-3333-4444-555555555555\n\
                  gpu_index=0\nmemory_bytes=42949672960\ncores_percent=50\ngeneration=3\n";
        let err = Limits::parse(v1).unwrap_err();
        assert!(matches!(err, LimitsError::Format(1)), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("format 1 is not supported") && err.contains("regenerate"), "{err}");
    }

    #[test]
    fn refuses_anything_unexpected() {
        let good = sample().render();
        let cases = [
            (good.replace("format=2", "format=1"), "format 1"),
            (good.replace("format=2", "format=3"), "format 3"),
            (good.replace("memory_bytes=", "memory_bytez="), "unknown key"),
            (good.replace("cores_percent=50", "cores_percent=0"), "cores_percent"),
            (good.replace("cores_percent=50", "cores_percent=101"), "cores_percent"),
            (good.replace("memory_bytes=42949672960", "memory_bytes=-1"), "memory_bytes"),
            (good.replace("mode=shim", "mode=mps"), "mode"),
            (good.replace("cores_policy=borrow", "cores_policy=share"), "`cores_policy` = `share`"),
            (good.replace("cores_policy=borrow", "cores_policy=Borrow"), "expected cap or borrow"),
            (good.replace("cores_policy=borrow", "cores_policy="), "cores_policy"),
            (good.replace("priority=high", "priority=urgent"), "`priority` = `urgent`"),
            (good.replace("priority=high", "priority=low"), "expected normal or high"),
            (good.replace("cores_policy=borrow\n", ""), "missing `cores_policy`"),
            (good.replace("priority=high\n", ""), "missing `priority`"),
            (format!("{good}priority=normal\n"), "`priority` given twice"),
            (good.replace("generation=1\n", ""), "missing `generation`"),
            (format!("{good}slice=slice1\n"), "twice"),
            (good.replace("slice=slice0", "slice=../../etc"), "slice"),
            (good.replace("gpu_uuid=GPU-11111111", "gpu_uuid=GPU/../11111111"), "gpu_uuid"),
            ("garbage\n".to_owned(), "expected key=value"),
            (String::new(), "missing `format`"),
        ];
        for (text, want) in cases {
            let err = Limits::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn generation_grows_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let first = sample().store(dir.path()).unwrap();
        assert_eq!(first.generation, 1);
        let again = sample().store(dir.path()).unwrap();
        assert_eq!(again.generation, 1, "an unchanged rewrite keeps the generation");
        let bigger = Limits { memory_bytes: 50 << 30, ..sample() }.store(dir.path()).unwrap();
        assert_eq!(bigger.generation, 2);
        assert_eq!(Limits::load(&limits_path(dir.path(), "slice0")).unwrap(), bigger);
        let capped = Limits { cores_policy: CoresPolicy::Cap, ..bigger.clone() }.store(dir.path()).unwrap();
        assert_eq!(capped.generation, 3, "a policy change is a change");
        let normal = Limits { priority: Priority::Normal, ..capped.clone() }.store(dir.path()).unwrap();
        assert_eq!(normal.generation, 4, "so is a priority change");
        assert_eq!(normal.clone().store(dir.path()).unwrap().generation, 4);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(limits_path(dir.path(), "slice0")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits");
        std::fs::write(&path, "#".repeat(5000)).unwrap();
        assert!(matches!(Limits::load(&path), Err(LimitsError::TooLarge { .. })));
    }
}
