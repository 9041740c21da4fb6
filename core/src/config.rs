//! The node configuration, `/etc/gpuslice/config.toml`.
//!
//! Parsing is strict (`deny_unknown_fields`) and every value is checked once, here, so that
//! a bad file is refused with one line naming the key and the value before anything is
//! written. Checks that need the GPUs themselves (a `uuid` that matches nothing, slices that
//! do not fit on their card) happen in [`crate::plan`].

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cdi;
use crate::units::{ByteSize, Span};

/// Where the configuration lives on a node.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gpuslice/config.toml";
/// The CDI kind devices are published under unless the config says otherwise.
pub const DEFAULT_KIND: &str = "gpuslice.dev/vgpu";
/// Most slices one GPU may be split into.
pub const MAX_SPLIT_COUNT: u32 = 64;

/// How a GPU is handed to containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The whole GPU, published as `gpu<index>`, with no limits.
    None,
    /// Software slices enforced by the interception library.
    #[default]
    Shim,
    /// The GPU's existing MIG instances, one device each (`mig<gpu>-<gi>`), enforced by the
    /// hardware ([`crate::mig`]).
    Mig,
    /// Slices enforced by an MPS control daemon per GPU (pinned memory and active thread
    /// percentage per client); see [`crate::mps`].
    Mps,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Shim => "shim",
            Mode::Mig => "mig",
            Mode::Mps => "mps",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a slice's `cores` percentage means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CoresPolicy {
    /// `cores` is a hard cap: the slice never gets more, even on an idle GPU.
    #[default]
    Cap,
    /// `cores` is a guaranteed share; the slice may borrow compute the GPU is otherwise not
    /// using, and gives it back when other slices need it.
    Borrow,
}

impl CoresPolicy {
    pub const ALL: [CoresPolicy; 2] = [CoresPolicy::Cap, CoresPolicy::Borrow];

    pub fn as_str(self) -> &'static str {
        match self {
            CoresPolicy::Cap => "cap",
            CoresPolicy::Borrow => "borrow",
        }
    }
}

impl fmt::Display for CoresPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a slice's work ranks against the other slices on its GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Normal,
    /// Not slowed by normal slices: they yield while it is busy, though never to the point
    /// of starving.
    High,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::Normal, Priority::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the host guard does about a process that breaks a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardPolicy {
    /// `SIGKILL`, and one log line.
    Kill,
    /// One log line only.
    Log,
}

impl GuardPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardPolicy::Kill => "kill",
            GuardPolicy::Log => "log",
        }
    }
}

impl fmt::Display for GuardPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the host guard slows a slice that takes far more GPU time than its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ComputeGuard {
    /// Measure and report only.
    #[default]
    Off,
    /// Freeze and thaw the slice's containers (cgroup freezer) until it is back under.
    Throttle,
}

impl fmt::Display for ComputeGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComputeGuard::Off => "off",
            ComputeGuard::Throttle => "throttle",
        })
    }
}

/// `[guard]`: the host guard, `gpuslice-cdi daemon`, which checks every slice against the
/// driver's own per-process numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Time between two passes over the GPUs.
    #[serde(default = "default_guard_interval")]
    pub interval: Span,
    /// A slice over its memory limit (plus the tolerance): kill the process that grew last, or
    /// log only. `[[gpu]]` tables and explicit slices may set their own.
    #[serde(default = "default_memory_policy")]
    pub memory_policy: GuardPolicy,
    /// Per process of a slice on the GPU: how much the driver's count may exceed what the
    /// interception library charges for a context (a real context is often larger).
    #[serde(default = "default_context_tolerance")]
    pub context_tolerance: ByteSize,
    /// The most the tolerances of one slice's processes add up to.
    #[serde(default = "default_max_tolerance")]
    pub max_tolerance: ByteSize,
    /// A process using a GPU that has slices, in none of them: log it once, or kill it.
    #[serde(default = "default_unsliced_policy")]
    pub unsliced_policy: GuardPolicy,
    /// Slow a slice far above its compute share, or only report it.
    #[serde(default)]
    pub compute_guard: ComputeGuard,
    /// How long a slice must be above its share (by the margin) before it is throttled.
    #[serde(default = "default_compute_window")]
    pub compute_window: Span,
    /// Percentage points above its share that count as "far above".
    #[serde(default = "default_compute_margin")]
    pub compute_margin: u32,
    /// How long a slice's region lock may be seen held without a break before its holder is a
    /// squatter (killed, or logged, by the slice's memory policy).
    #[serde(default = "default_lock_hold_limit")]
    pub lock_hold_limit: Span,
    /// Where the Prometheus endpoint (`/metrics`) listens, `host:port`; `""` turns it off.
    #[serde(default = "default_metrics")]
    pub metrics: String,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            interval: default_guard_interval(),
            memory_policy: default_memory_policy(),
            context_tolerance: default_context_tolerance(),
            max_tolerance: default_max_tolerance(),
            unsliced_policy: default_unsliced_policy(),
            compute_guard: ComputeGuard::default(),
            compute_window: default_compute_window(),
            compute_margin: default_compute_margin(),
            lock_hold_limit: default_lock_hold_limit(),
            metrics: default_metrics(),
        }
    }
}

/// Shortest and longest guard interval accepted.
pub const GUARD_INTERVAL_RANGE: (u64, u64) = (100, 60_000);

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// CDI kind, `vendor/class`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Directory the CDI spec is written to.
    #[serde(default = "default_spec_dir")]
    pub spec_dir: PathBuf,
    /// Host directory holding each slice's `limits` and `region`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Where the OCI hook is installed on the host.
    #[serde(default = "default_hook_path")]
    pub hook_path: PathBuf,
    /// Where the interception library is installed on the host.
    #[serde(default = "default_shim_path")]
    pub shim_path: PathBuf,
    /// Root under which the NVIDIA driver's files are found.
    #[serde(default = "default_driver_root")]
    pub driver_root: PathBuf,
    /// Annotate the spec and its devices (GPU UUID, limits). Off by default: annotations need
    /// CDI 0.6.0, which engines vendoring an older CDI library (podman 4.3 in Debian 12,
    /// containerd 1.7) refuse; without them the spec is CDI 0.5.0, which every CDI engine reads.
    #[serde(default)]
    pub annotations: bool,
    /// Settings for every GPU without an override.
    #[serde(default)]
    pub defaults: GpuDefaults,
    /// Per-GPU overrides, matched by `index` or `uuid`.
    #[serde(default, rename = "gpu")]
    pub gpus: Vec<GpuOverride>,
    /// `gpuslice-runtime`, for engines without CDI.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The host guard (`gpuslice-cdi daemon`).
    #[serde(default)]
    pub guard: GuardConfig,
    /// The Kubernetes device plugin (`gpuslice-device-plugin`).
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// The MPS control daemons of GPUs in mode `mps`.
    #[serde(default)]
    pub mps: MpsConfig,
}

/// `[mps]`: how the node daemon runs each mode-`mps` GPU's MPS control daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MpsConfig {
    /// The control daemon: an absolute path, or a name looked up in `PATH`.
    #[serde(default = "default_mps_control")]
    pub control: PathBuf,
}

impl Default for MpsConfig {
    fn default() -> Self {
        Self { control: default_mps_control() }
    }
}

fn default_mps_control() -> PathBuf {
    PathBuf::from(crate::mps::CONTROL_BINARY)
}

/// `[runtime]`: how `gpuslice-runtime` (the OCI runtime for engines without CDI) works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The OCI runtime it runs once the bundle is edited: an absolute path, or a name looked
    /// up in `PATH`.
    #[serde(default = "default_runtime")]
    pub runtime: PathBuf,
    /// Where a container may ask for slices.
    #[serde(default = "default_slice_sources")]
    pub sources: Vec<SliceSource>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { runtime: default_runtime(), sources: default_slice_sources() }
    }
}

/// A place in a container's OCI config where `gpuslice-runtime` looks for the slices it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SliceSource {
    /// The annotation `gpuslice.dev/slices` (containerd, CRI-O, Kubernetes, `podman --annotation`).
    Annotation,
    /// The variable `GPUSLICE_SLICES` (`docker run -e`, or an image's `ENV`).
    Env,
    /// Docker Swarm's `DOCKER_RESOURCE_GPUSLICE`, set from the service's generic resources.
    Swarm,
}

impl SliceSource {
    pub const ALL: [SliceSource; 3] = [SliceSource::Annotation, SliceSource::Env, SliceSource::Swarm];

    pub fn as_str(self) -> &'static str {
        match self {
            SliceSource::Annotation => "annotation",
            SliceSource::Env => "env",
            SliceSource::Swarm => "swarm",
        }
    }
}

impl fmt::Display for SliceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[defaults]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuDefaults {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "default_split_count")]
    pub split_count: u32,
    #[serde(default = "default_scaling")]
    pub memory_scaling: f64,
    #[serde(default = "default_scaling")]
    pub core_scaling: f64,
    #[serde(default)]
    pub cores_policy: CoresPolicy,
    #[serde(default)]
    pub priority: Priority,
}

impl Default for GpuDefaults {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            split_count: default_split_count(),
            memory_scaling: default_scaling(),
            core_scaling: default_scaling(),
            cores_policy: CoresPolicy::default(),
            priority: Priority::default(),
        }
    }
}

/// One `[[gpu]]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GpuOverride {
    pub index: Option<u32>,
    pub uuid: Option<String>,
    pub mode: Option<Mode>,
    pub split_count: Option<u32>,
    pub memory_scaling: Option<f64>,
    pub core_scaling: Option<f64>,
    pub cores_policy: Option<CoresPolicy>,
    pub priority: Option<Priority>,
    /// The guard's memory policy for this GPU's slices; `[guard] memory_policy` when left out.
    pub memory_policy: Option<GuardPolicy>,
    /// Explicit slices, instead of an equal split.
    pub slices: Option<Vec<SliceConfig>>,
    /// Mode `mig`: the GPU instances `gpuslice-cdi mig apply` creates (profile names as
    /// `nvidia-smi mig -lgip` prints them, e.g. `"3g.40gb"`), each with its default compute
    /// instance ([`crate::mig::check_layout`]).
    pub mig_layout: Option<Vec<String>>,
}

/// One explicit slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceConfig {
    /// CDI device name; `slice<N>` when left out.
    pub name: Option<String>,
    pub memory: ByteSize,
    /// Percent of the GPU's compute, 1–100.
    pub cores: u32,
    /// The GPU's (or the defaults') when left out.
    pub cores_policy: Option<CoresPolicy>,
    /// The GPU's (or the defaults') when left out.
    pub priority: Option<Priority>,
    /// The guard's memory policy for this slice; the GPU's, then `[guard]`'s, when left out.
    pub memory_policy: Option<GuardPolicy>,
}

/// The settings that apply to one GPU, defaults and override merged.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSettings {
    pub mode: Mode,
    pub split_count: u32,
    pub memory_scaling: f64,
    pub core_scaling: f64,
    pub cores_policy: CoresPolicy,
    pub priority: Priority,
    /// The guard's memory policy: the override's, else `[guard]`'s.
    pub memory_policy: GuardPolicy,
    pub slices: Option<Vec<SliceConfig>>,
}

fn default_guard_interval() -> Span {
    Span::from_millis(1000)
}
fn default_memory_policy() -> GuardPolicy {
    GuardPolicy::Kill
}
fn default_context_tolerance() -> ByteSize {
    ByteSize(256 * ByteSize::MIB)
}
fn default_max_tolerance() -> ByteSize {
    ByteSize(ByteSize::GIB)
}
fn default_unsliced_policy() -> GuardPolicy {
    GuardPolicy::Log
}
fn default_compute_window() -> Span {
    Span::from_millis(5000)
}
fn default_compute_margin() -> u32 {
    15
}
fn default_lock_hold_limit() -> Span {
    Span::from_millis(3000)
}
/// The metrics endpoint's default: on, local only, next to the GPU exporters (DCGM's 9400).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9403";
fn default_metrics() -> String {
    DEFAULT_METRICS_ADDR.to_owned()
}

fn default_kind() -> String {
    DEFAULT_KIND.to_owned()
}
fn default_spec_dir() -> PathBuf {
    PathBuf::from("/var/run/cdi")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/run/gpuslice")
}
fn default_hook_path() -> PathBuf {
    PathBuf::from("/usr/bin/gpuslice-hook")
}
fn default_shim_path() -> PathBuf {
    PathBuf::from("/usr/lib/gpuslice/libgpuslice.so")
}
fn default_driver_root() -> PathBuf {
    PathBuf::from("/")
}
fn default_runtime() -> PathBuf {
    PathBuf::from("runc")
}
fn default_slice_sources() -> Vec<SliceSource> {
    SliceSource::ALL.to_vec()
}
fn default_split_count() -> u32 {
    1
}
fn default_scaling() -> f64 {
    1.0
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kind: default_kind(),
            spec_dir: default_spec_dir(),
            state_dir: default_state_dir(),
            hook_path: default_hook_path(),
            shim_path: default_shim_path(),
            driver_root: default_driver_root(),
            annotations: false,
            defaults: GpuDefaults::default(),
            gpus: Vec::new(),
            runtime: RuntimeConfig::default(),
            guard: GuardConfig::default(),
            kubernetes: KubernetesConfig::default(),
            mps: MpsConfig::default(),
        }
    }
}

/// A configuration that cannot be used. Each message names the key and the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The path is the caller's to name: every caller puts it in front.
    #[error("cannot read: {reason}")]
    Read { path: PathBuf, reason: String },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("line {line}: {key}{message}")]
    Parse { line: usize, key: String, message: String },
    #[error("{key} = {value}: {reason}")]
    Invalid { key: String, value: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), value: value.to_string(), reason: reason.into() }
    }
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.to_owned(), reason: e.to_string() })?;
        Self::parse(&text)
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| parse_error(text, "", &e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            parse_error(text, &key, e.inner())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that can be checked without the GPUs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        cdi::validate_kind(&self.kind).map_err(|e| ConfigError::invalid("kind", quoted(&self.kind), e.to_string()))?;
        for (key, path) in [
            ("spec_dir", &self.spec_dir),
            ("state_dir", &self.state_dir),
            ("hook_path", &self.hook_path),
            ("shim_path", &self.shim_path),
            ("driver_root", &self.driver_root),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::invalid(key, quoted(&path.display()), "must be an absolute path"));
            }
        }
        let runtime = &self.runtime.runtime;
        if runtime.as_os_str().is_empty() || (!runtime.is_absolute() && runtime.components().count() != 1) {
            return Err(ConfigError::invalid(
                "runtime.runtime",
                quoted(&runtime.display()),
                "must be an absolute path or a plain command name",
            ));
        }
        if runtime.file_name().is_some_and(|n| n == "gpuslice-runtime") {
            return Err(ConfigError::invalid(
                "runtime.runtime",
                quoted(&runtime.display()),
                "names gpuslice-runtime itself; give the runtime it should run, e.g. \"runc\"",
            ));
        }
        let control = &self.mps.control;
        if control.as_os_str().is_empty() || (!control.is_absolute() && control.components().count() != 1) {
            return Err(ConfigError::invalid(
                "mps.control",
                quoted(&control.display()),
                "must be an absolute path or a plain command name",
            ));
        }
        let d = &self.defaults;
        check_split_count("defaults.split_count", d.split_count)?;
        check_scaling("defaults.memory_scaling", d.memory_scaling)?;
        check_scaling("defaults.core_scaling", d.core_scaling)?;
        check_mps_scaling("defaults.memory_scaling", d.mode, d.memory_scaling)?;

        let mut names = HashSet::new();
        for (i, g) in self.gpus.iter().enumerate() {
            let at = |key: &str| format!("gpu[{i}].{key}");
            if g.index.is_none() && g.uuid.is_none() {
                return Err(ConfigError::invalid(
                    format!("gpu[{i}]"),
                    "{ … }",
                    "needs `index` or `uuid` to say which GPU it overrides",
                ));
            }
            if let Some(n) = g.split_count {
                check_split_count(&at("split_count"), n)?;
            }
            if let Some(s) = g.memory_scaling {
                check_scaling(&at("memory_scaling"), s)?;
            }
            if let Some(s) = g.core_scaling {
                check_scaling(&at("core_scaling"), s)?;
            }
            let mode = g.mode.unwrap_or(d.mode);
            check_mps_scaling(&at("memory_scaling"), mode, g.memory_scaling.unwrap_or(d.memory_scaling))?;
            let Some(slices) = &g.slices else {
                check_mig_keys(i, g, self.defaults.mode)?;
                continue;
            };
            if slices.is_empty() {
                return Err(ConfigError::invalid(
                    at("slices"),
                    "[]",
                    "lists no slice; leave it out for an equal split",
                ));
            }
            if let Some(n) = g.split_count {
                return Err(ConfigError::invalid(at("split_count"), n, "cannot be combined with explicit `slices`"));
            }
            if slices.len() > MAX_SPLIT_COUNT as usize {
                return Err(ConfigError::invalid(
                    at("slices"),
                    format!("[{} slices]", slices.len()),
                    format!("lists more than {MAX_SPLIT_COUNT} slices, the most one GPU can have"),
                ));
            }
            if g.mode == Some(Mode::None) {
                return Err(ConfigError::invalid(
                    at("mode"),
                    "\"none\"",
                    "publishes the whole GPU and cannot have `slices`",
                ));
            }
            check_mig_keys(i, g, self.defaults.mode)?;
            for (j, s) in slices.iter().enumerate() {
                let at = |key: &str| format!("gpu[{i}].slices[{j}].{key}");
                if !(1..=100).contains(&s.cores) {
                    return Err(ConfigError::invalid(at("cores"), s.cores, "must be between 1 and 100"));
                }
                if s.memory.0 == 0 {
                    return Err(ConfigError::invalid(at("memory"), quoted(&s.memory), "must be more than 0"));
                }
                if let Some(name) = &s.name {
                    cdi::validate_device_name(name)
                        .map_err(|e| ConfigError::invalid(at("name"), quoted(name), e.to_string()))?;
                    if is_reserved_name(name) {
                        return Err(ConfigError::invalid(
                            at("name"),
                            quoted(name),
                            "is reserved: `all`, `slice<N>`, `gpu<N>` and `mig<N>-<M>` are named by gpuslice",
                        ));
                    }
                    if !names.insert(name.clone()) {
                        return Err(ConfigError::invalid(at("name"), quoted(name), "is used by another slice"));
                    }
                }
            }
        }
        self.guard.validate()?;
        self.kubernetes.validate()?;
        for (i, a) in self.gpus.iter().enumerate() {
            for b in &self.gpus[..i] {
                let same_index = a.index.is_some() && a.index == b.index;
                let same_uuid = a.uuid.is_some() && a.uuid == b.uuid;
                if same_index || same_uuid {
                    let (key, value) = match (same_index, &a.uuid) {
                        (true, _) => ("index", a.index.map(|n| n.to_string()).unwrap_or_default()),
                        (false, uuid) => ("uuid", quoted(&uuid.clone().unwrap_or_default())),
                    };
                    return Err(ConfigError::invalid(format!("gpu[{i}].{key}"), value, "is overridden twice"));
                }
            }
        }
        Ok(())
    }

    /// The settings for one GPU: its override (matched by index or UUID) over the defaults.
    pub fn settings_for(&self, index: u32, uuid: &str) -> GpuSettings {
        let d = &self.defaults;
        let o = self.override_for(index, uuid).cloned().unwrap_or_default();
        GpuSettings {
            mode: o.mode.unwrap_or(d.mode),
            split_count: o.split_count.unwrap_or(d.split_count),
            memory_scaling: o.memory_scaling.unwrap_or(d.memory_scaling),
            core_scaling: o.core_scaling.unwrap_or(d.core_scaling),
            cores_policy: o.cores_policy.unwrap_or(d.cores_policy),
            priority: o.priority.unwrap_or(d.priority),
            memory_policy: o.memory_policy.unwrap_or(self.guard.memory_policy),
            slices: o.slices,
        }
    }

    /// The `[[gpu]]` table that applies to a GPU, if any.
    pub fn override_for(&self, index: u32, uuid: &str) -> Option<&GpuOverride> {
        self.gpus.iter().find(|g| g.matches(index, uuid))
    }
}

impl GuardConfig {
    /// Where the metrics endpoint listens; `None` when it is off.
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>, std::net::AddrParseError> {
        let text = self.metrics.trim();
        if text.is_empty() { Ok(None) } else { text.parse().map(Some) }
    }

    /// Checks the `[guard]` values, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (lo, hi) = GUARD_INTERVAL_RANGE;
        let ms = self.interval.as_millis();
        if !(lo..=hi).contains(&ms) {
            return Err(ConfigError::invalid(
                "guard.interval",
                quoted(&self.interval),
                format!("must be between {lo}ms and {}s", hi / 1000),
            ));
        }
        let window = self.compute_window.as_millis();
        if window < 2 * ms || window > 600_000 {
            return Err(ConfigError::invalid(
                "guard.compute_window",
                quoted(&self.compute_window),
                format!("must be at least two intervals ({}) and at most 10 minutes", Span::from_millis(2 * ms)),
            ));
        }
        let hold = self.lock_hold_limit.as_millis();
        if !(1000..=600_000).contains(&hold) {
            return Err(ConfigError::invalid(
                "guard.lock_hold_limit",
                quoted(&self.lock_hold_limit),
                "must be between 1s and 10 minutes",
            ));
        }
        if self.metrics_addr().is_err() {
            return Err(ConfigError::invalid(
                "guard.metrics",
                format!("{:?}", self.metrics),
                "must be host:port with a numeric address (\"127.0.0.1:9403\", \"[::1]:9403\", \"0.0.0.0:9403\"), or \"\" for off",
            ));
        }
        if !(1..=100).contains(&self.compute_margin) {
            return Err(ConfigError::invalid("guard.compute_margin", self.compute_margin, "must be between 1 and 100"));
        }
        if self.max_tolerance < self.context_tolerance {
            return Err(ConfigError::invalid(
                "guard.max_tolerance",
                quoted(&self.max_tolerance),
                format!("must be at least context_tolerance ({})", self.context_tolerance),
            ));
        }
        Ok(())
    }
}

/// Where the kubelet looks for device plugins' sockets (and serves `kubelet.sock`).
pub const DEFAULT_DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// The resource slices are advertised under unless the config says otherwise.
pub const DEFAULT_RESOURCE: &str = "gpuslice.dev/vgpu";
/// The resource whole GPUs (mode `none`) are advertised under unless the config says otherwise.
pub const DEFAULT_GPU_RESOURCE: &str = "gpuslice.dev/gpu";
/// Longest `resource` name part under `resources = "by-size"`: the size suffix (`-<N>m`, at
/// most 16 characters) must still fit a Kubernetes name's 63.
pub const MAX_BY_SIZE_NAME_LEN: usize = 47;
/// Shortest and longest device plugin poll interval accepted.
pub const KUBERNETES_INTERVAL_RANGE: (u64, u64) = (50, 60_000);

/// `[kubernetes] resources`: how slices map to resource names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceNaming {
    /// Every slice under `resource`.
    #[default]
    Single,
    /// Each slice under `resource` plus its memory size: `gpuslice.dev/vgpu-20g`.
    BySize,
}

/// `[kubernetes] allocation`: which GPU's slices a container is given first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// The GPU with the most free slices first: neighbours share as few GPUs as they can.
    #[default]
    Spread,
    /// The GPU with the fewest free slices first: whole GPUs stay free for larger requests.
    Binpack,
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Allocation::Spread => "spread",
            Allocation::Binpack => "binpack",
        })
    }
}

/// `[kubernetes]`: the device plugin, `gpuslice-device-plugin`. How slices become resources
/// lives in that crate; the plan itself knows nothing of Kubernetes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The extended resource slices are advertised under (`domain/name`).
    #[serde(default = "default_resource")]
    pub resource: String,
    /// One resource for every slice, or one per slice size.
    #[serde(default)]
    pub resources: ResourceNaming,
    /// The extended resource whole GPUs (mode `none`) are advertised under.
    #[serde(default = "default_gpu_resource")]
    pub gpu_resource: String,
    /// Which GPU's slices `GetPreferredAllocation` offers first.
    #[serde(default)]
    pub allocation: Allocation,
    /// The kubelet's device plugin directory (its `kubelet.sock` and the plugins' sockets).
    #[serde(default = "default_device_plugin_dir")]
    pub device_plugin_dir: PathBuf,
    /// How often the plugin reads the spec, the limits and the GPUs for changes.
    #[serde(default = "default_kubernetes_interval")]
    pub interval: Span,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            resource: default_resource(),
            resources: ResourceNaming::default(),
            gpu_resource: default_gpu_resource(),
            allocation: Allocation::default(),
            device_plugin_dir: default_device_plugin_dir(),
            interval: default_kubernetes_interval(),
        }
    }
}

fn default_resource() -> String {
    DEFAULT_RESOURCE.to_owned()
}
fn default_gpu_resource() -> String {
    DEFAULT_GPU_RESOURCE.to_owned()
}
fn default_device_plugin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DEVICE_PLUGIN_DIR)
}
fn default_kubernetes_interval() -> Span {
    Span::from_millis(2000)
}

impl KubernetesConfig {
    /// Checks the `[kubernetes]` values, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [("kubernetes.resource", &self.resource), ("kubernetes.gpu_resource", &self.gpu_resource)] {
            validate_extended_resource_name(value)
                .map_err(|reason| ConfigError::invalid(key, quoted(value), reason))?;
        }
        let name = |r: &str| r.split_once('/').map_or("", |(_, n)| n).to_owned();
        if self.resources == ResourceNaming::BySize && name(&self.resource).len() > MAX_BY_SIZE_NAME_LEN {
            return Err(ConfigError::invalid(
                "kubernetes.resource",
                quoted(&self.resource),
                format!(
                    "its name part is longer than {MAX_BY_SIZE_NAME_LEN} characters, too long for resources = \"by-size\" to add a size"
                ),
            ));
        }
        if name(&self.resource) == name(&self.gpu_resource) {
            return Err(ConfigError::invalid(
                "kubernetes.gpu_resource",
                quoted(&self.gpu_resource),
                "has the same name part as `resource`; each resource needs a socket of its own",
            ));
        }
        if !self.device_plugin_dir.is_absolute() {
            return Err(ConfigError::invalid(
                "kubernetes.device_plugin_dir",
                quoted(&self.device_plugin_dir.display()),
                "must be an absolute path",
            ));
        }
        let (lo, hi) = KUBERNETES_INTERVAL_RANGE;
        if !(lo..=hi).contains(&self.interval.as_millis()) {
            return Err(ConfigError::invalid(
                "kubernetes.interval",
                quoted(&self.interval),
                format!("must be between {lo}ms and {}s", hi / 1000),
            ));
        }
        Ok(())
    }
}

/// Checks a Kubernetes extended resource name: `domain/name`, the domain a DNS subdomain
/// outside `kubernetes.io` and `requests.`, the name a qualified name of at most 63 characters.
pub fn validate_extended_resource_name(resource: &str) -> Result<(), String> {
    let Some((domain, name)) = resource.split_once('/') else {
        return Err("must be domain/name, e.g. \"gpuslice.dev/vgpu\"".to_owned());
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err(format!("the domain {domain:?} is not a DNS subdomain (lowercase letters, digits, `-` and `.`)"));
    }
    if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") || resource.starts_with("requests.") {
        return Err("is reserved by Kubernetes (kubernetes.io, requests.)".to_owned());
    }
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| alnum(b) || matches!(b, b'-' | b'_' | b'.'))
        || !name.bytes().next().is_some_and(alnum)
        || !name.bytes().last().is_some_and(alnum)
    {
        return Err(format!(
            "the name {name:?} must be 1 to 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

impl GpuOverride {
    /// Whether this table names the GPU; a table with both keys must match both.
    pub fn matches(&self, index: u32, uuid: &str) -> bool {
        self.index.is_none_or(|i| i == index)
            && self.uuid.as_deref().is_none_or(|u| u.eq_ignore_ascii_case(uuid))
            && (self.index.is_some() || self.uuid.is_some())
    }
}

/// Names gpuslice gives itself, which an explicit slice may not take.
pub fn is_reserved_name(name: &str) -> bool {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    name == "all" || numbered("slice") || numbered("gpu") || is_mig_name(name)
}

/// `mig<N>-<M>` or `mig<N>-<M>-<C>`, the names of MIG devices ([`crate::mig::device_name`]).
fn is_mig_name(name: &str) -> bool {
    name.strip_prefix("mig").is_some_and(|rest| {
        let parts: Vec<&str> = rest.split('-').collect();
        (2..=3).contains(&parts.len()) && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A `[[gpu]]` table for a GPU in mode `mig` may not set what only software slices have: the
/// instances' sizes are the hardware's (`nvidia-smi mig`), and nothing is left to enforce.
fn check_mig_keys(i: usize, g: &GpuOverride, default_mode: Mode) -> Result<(), ConfigError> {
    if g.mode.unwrap_or(default_mode) != Mode::Mig {
        return match &g.mig_layout {
            Some(layout) => Err(ConfigError::invalid(
                format!("gpu[{i}].mig_layout"),
                format!("[{} instances]", layout.len()),
                "applies only to a GPU in mode \"mig\"",
            )),
            None => Ok(()),
        };
    }
    if let Some(layout) = &g.mig_layout {
        crate::mig::check_layout(layout)
            .map_err(|(key, value, reason)| ConfigError::invalid(format!("gpu[{i}].mig_layout{key}"), value, reason))?;
    }
    let set = [
        ("split_count", g.split_count.map(|n| n.to_string())),
        ("slices", g.slices.as_ref().map(|s| format!("[{} slices]", s.len()))),
        ("memory_scaling", g.memory_scaling.map(|s| s.to_string())),
        ("core_scaling", g.core_scaling.map(|s| s.to_string())),
        ("cores_policy", g.cores_policy.map(|p| quoted(&p))),
        ("priority", g.priority.map(|p| quoted(&p))),
        ("memory_policy", g.memory_policy.map(|p| quoted(&p))),
    ];
    match set.into_iter().find_map(|(key, value)| value.map(|v| (key, v))) {
        Some((key, value)) => Err(ConfigError::invalid(
            format!("gpu[{i}].{key}"),
            value,
            "does not apply to mode \"mig\": each existing MIG instance is one device, sized and enforced by the hardware (nvidia-smi mig)",
        )),
        None => Ok(()),
    }
}

fn check_split_count(key: &str, n: u32) -> Result<(), ConfigError> {
    if (1..=MAX_SPLIT_COUNT).contains(&n) {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, n, format!("must be between 1 and {MAX_SPLIT_COUNT}")))
    }
}

fn check_scaling(key: &str, s: f64) -> Result<(), ConfigError> {
    if s.is_finite() && s > 0.0 { Ok(()) } else { Err(ConfigError::invalid(key, s, "must be a number greater than 0")) }
}

/// MPS limits pinned device memory, which cannot be overcommitted.
fn check_mps_scaling(key: &str, mode: Mode, s: f64) -> Result<(), ConfigError> {
    if mode == Mode::Mps && s > 1.0 {
        Err(ConfigError::invalid(
            key,
            s,
            "must be at most 1 in mode \"mps\": MPS limits pinned device memory, which cannot be overcommitted",
        ))
    } else {
        Ok(())
    }
}

fn quoted(v: &impl fmt::Display) -> String {
    format!("\"{v}\"")
}

/// One line for a TOML error: its line number, the key path and the message.
fn parse_error(text: &str, key: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map_or(0, |s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let message = e.message().replace('\n', " ");
    let key = if key.is_empty() || key == "." { String::new() } else { format!("{key}: ") };
    ConfigError::Parse { line, key, message }
}
