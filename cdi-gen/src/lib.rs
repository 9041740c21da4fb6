//! `gpuslice-cdi`: publishes a node's GPU slices to container engines as a CDI spec.
//!
//! One `generate` run, end to end: [`Config`] is read and checked
//! (`/etc/gpuslice/config.toml`); [`discover::discover`] loads NVML and lists the GPUs;
//! [`gpuslice_core::plan::plan`] turns both into devices (`slice0`, `slice1`, …, `gpu<N>` for
//! whole GPUs); each GPU's `/dev/nvidia<minor>` and the shared control nodes are looked up
//! under the dev root; [`spec::build`] makes the spec, which is checked with
//! [`gpuslice_core::cdi::validate`]. Only when all of that succeeded is anything written:
//! each device's `limits` file under the state dir, and for a slice its shared `region` and its
//! GPU's `board` on zram devices that no container can truncate or grow
//! ([`gpuslice_core::state`]: a sound one is kept, a damaged one repaired in place, anything
//! else replaced, the board rebuilt from the config), then the spec, atomically with mode 0644.

pub mod discover;
pub mod engines;
pub mod guard;
pub mod mig;
pub mod mps;
pub mod setup;
pub mod spec;
pub mod status;
pub mod top;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gpuslice_core::board::BoardSlice;
use gpuslice_core::cdi::{self, Spec};
use gpuslice_core::config::{Config, Mode};
use gpuslice_core::fsutil;
use gpuslice_core::limits::Limits;
use gpuslice_core::plan::{self, Plan};
use gpuslice_core::state;

use crate::discover::NodeInfo;

/// The spec file's name in the spec dir.
pub use gpuslice_core::cdi::SPEC_FILE;

/// How a spec is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// Where the node's facts come from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub config_path: PathBuf,
    pub nvml_lib: Option<PathBuf>,
    pub dev_root: PathBuf,
}

/// Reads config and GPUs and plans the devices.
pub fn load_plan(sources: &Sources) -> Result<(Config, NodeInfo, Plan)> {
    let config = load_config(&sources.config_path)?;
    let node = discover::discover(sources.nvml_lib.as_deref())?;
    let mut plan = plan::plan(&config, &node.gpus).with_context(|| sources.config_path.display().to_string())?;
    discover::mig_caps(&mut plan, &node.gpus, &config.driver_root)?;
    Ok((config, node, plan))
}

/// Reads the config; a missing file at the default path means all defaults.
pub fn load_config(path: &Path) -> Result<Config> {
    if path == Path::new(gpuslice_core::config::DEFAULT_CONFIG_PATH) && !path.exists() {
        tracing::info!(?path, "no config file; using the defaults");
        return Ok(Config::default());
    }
    Config::load(path).with_context(|| path.display().to_string())
}

/// What `generate` should write where.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// `None`: `<spec_dir>/gpuslice.yaml`; `Some("-")`: standard output.
    pub output: Option<PathBuf>,
    pub format: Option<Format>,
    /// `None`: the config's `state_dir`.
    pub state_dir: Option<PathBuf>,
}

/// What `generate` did.
#[derive(Debug)]
pub struct Generated {
    pub spec: Spec,
    /// Where the spec went; `None` for standard output.
    pub spec_path: Option<PathBuf>,
    pub limits: Vec<Limits>,
    /// One line per installed engine that cannot read this spec (see [`engines`]).
    pub warnings: Vec<String>,
    /// What it found wrong in the state and put right (or could not), one line each, for the
    /// operator.
    pub notes: Vec<String>,
}

/// Plans, builds and checks the spec, then writes the limits files and the spec.
pub fn generate(sources: &Sources, opts: &GenerateOptions) -> Result<Generated> {
    let (config, node, plan) = load_plan(sources)?;
    if plan.devices.is_empty() {
        bail!("NVML reports no GPU on this node: there is nothing to publish");
    }
    let mut gpu_nodes = BTreeMap::new();
    for gpu in &node.gpus {
        gpu_nodes.insert(gpu.index, discover::gpu_node(&sources.dev_root, gpu)?);
    }
    let mut control_nodes = Vec::new();
    for name in discover::CONTROL_NODES {
        match discover::find_node(&sources.dev_root, name)? {
            Some(n) => control_nodes.push(n),
            None => {
                tracing::info!(node = %name, dev_root = %sources.dev_root.display(), "control device node not present; leaving it out")
            }
        }
    }
    let mut mig_nodes = BTreeMap::new();
    for d in &plan.devices {
        if let Some(m) = &d.mig {
            mig_nodes.insert(d.name.clone(), discover::mig_nodes(&sources.dev_root, d.gpu_index, m)?);
        }
    }
    let state_dir = opts.state_dir.clone().unwrap_or_else(|| config.state_dir.clone());
    let spec = spec::build(&spec::Inputs {
        config: &config,
        node: &node,
        plan: &plan,
        gpu_nodes: &gpu_nodes,
        control_nodes: &control_nodes,
        mig_nodes: &mig_nodes,
        state_dir: &state_dir,
    });
    cdi::validate(&spec).context("the generated spec is not valid CDI (a bug in gpuslice-cdi)")?;
    let (needed, why) = cdi::minimum_version(&spec);
    let warnings =
        if needed > cdi::Version::FLOOR { engines::warnings(needed, why, &engines::installed()) } else { Vec::new() };

    let (spec_path, format) = match &opts.output {
        Some(p) if p.as_os_str() == "-" => (None, opts.format.unwrap_or(Format::Yaml)),
        Some(p) => (Some(p.clone()), opts.format.unwrap_or_else(|| format_for(p))),
        None => (Some(config.spec_dir.join(SPEC_FILE)), opts.format.unwrap_or(Format::Yaml)),
    };
    let text = render(&spec, format)?;

    // The spec's directory first: the likeliest write failure should come before any other write.
    if let Some(dir) = spec_path.as_deref().and_then(Path::parent).filter(|d| !d.as_os_str().is_empty()) {
        fsutil::create_dir_all_mode(dir, 0o755).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut limits = Vec::with_capacity(plan.devices.len());
    let mut notes = Vec::new();
    let sliced = plan.devices.iter().any(|d| d.mode == Mode::Shim);
    if sliced && !gpuslice_core::shm::zram::available() && gpuslice_core::shm::zram::load() {
        notes.push("loaded the zram module (the slices' shared state lives on zram devices)".to_owned());
    }
    if sliced && state::prepare_dir(&state_dir)? {
        notes.push(format!(
            "{} is on a nodev mount: mounted a tmpfs ({}) on it for the slices' device nodes",
            state_dir.display(),
            state::STATE_TMPFS_SOURCE
        ));
    }
    let mut boards: BTreeMap<&str, Vec<BoardSlice>> = BTreeMap::new();
    for d in &plan.devices {
        let written = d
            .limits()
            .store(&state_dir)
            .with_context(|| format!("writing the limits of {} under {}", d.name, state_dir.display()))?;
        if let Some(m) = &d.mig {
            m.store(&state_dir, &d.name)
                .with_context(|| format!("writing the MIG record of {} under {}", d.name, state_dir.display()))?;
        }
        if d.mode == Mode::Mps {
            mps::prepare_dirs(&state_dir, &d.gpu_uuid).with_context(|| {
                format!("creating the MPS directories of {} under {}", d.gpu_uuid, state_dir.display())
            })?;
        }
        if d.mode == Mode::Shim {
            let outcome = state::ensure_region(&state_dir, &d.name)
                .with_context(|| format!("setting up the region of {} under {}", d.name, state_dir.display()))?;
            match outcome {
                state::Outcome::Repaired => {
                    notes.push(format!("{}: its region was damaged; repaired in place", d.name))
                }
                state::Outcome::Busy => notes.push(format!(
                    "{}: its region's lock stayed held by a process on the slice; left as it is",
                    d.name
                )),
                state::Outcome::Kept | state::Outcome::Published => {}
            }
            boards.entry(&d.gpu_uuid).or_default().push(BoardSlice {
                name: d.name.clone(),
                priority: d.priority,
                cores: d.cores_percent,
            });
        }
        limits.push(written);
    }
    // Each GPU's board lists exactly its slices, so that pacing knows from the start whether a
    // high-priority slice shares the GPU, and records a container forged are gone.
    for (uuid, slices) in &boards {
        let (outcome, rebuilt) = state::ensure_board(&state_dir, uuid, slices, monotonic_ns())
            .with_context(|| format!("setting up the board of {uuid} under {}", state_dir.display()))?;
        if outcome == state::Outcome::Repaired {
            notes.push(format!("{uuid}: its board was damaged; repaired in place"));
        }
        if rebuilt.dropped > 0 {
            notes.push(format!("{uuid}: dropped {} board records of no configured slice", rebuilt.dropped));
        }
    }
    state::remove_retired(&state_dir);
    match &spec_path {
        None => std::io::stdout().write_all(text.as_bytes()).context("writing the spec to standard output")?,
        Some(path) => {
            fsutil::write_atomic(path, text.as_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))?
        }
    }
    Ok(Generated { spec, spec_path, limits, warnings, notes })
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of the board's activity times.
fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime fills it in.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// JSON for `.json` files, YAML otherwise.
fn format_for(path: &Path) -> Format {
    if path.extension().is_some_and(|e| e == "json") { Format::Json } else { Format::Yaml }
}

/// The spec as text, YAML with a header comment or pretty JSON.
pub fn render(spec: &Spec, format: Format) -> Result<String> {
    Ok(match format {
        Format::Yaml => format!(
            "# Generated by gpuslice-cdi {}; do not edit: change /etc/gpuslice/config.toml and run `gpuslice-cdi generate`.\n{}",
            env!("CARGO_PKG_VERSION"),
            serde_yaml::to_string(spec)?
        ),
        Format::Json => serde_json::to_string_pretty(spec)? + "\n",
    })
}

/// The plan as a table. A whole GPU has no policy or priority: `-`.
pub fn list_table(plan: &Plan) -> String {
    let rows: Vec<Vec<String>> = plan
        .devices
        .iter()
        .map(|d| {
            let sliced = |v: &dyn std::fmt::Display| if d.mode == Mode::Shim { v.to_string() } else { "-".to_owned() };
            vec![
                d.name.clone(),
                d.gpu_index.to_string(),
                d.gpu_uuid.clone(),
                format!("{:.2}", d.memory_bytes as f64 / (1u64 << 30) as f64),
                d.cores_percent.to_string(),
                sliced(&d.cores_policy),
                sliced(&d.priority),
                d.mode.to_string(),
            ]
        })
        .collect();
    render_table(
        &["SLICE", "GPU", "UUID", "MEMORY (GiB)", "CORES (%)", "POLICY", "PRIORITY", "MODE"],
        &[false, true, false, true, true, false, false, false],
        rows,
    )
}

/// Columns padded to their widest cell, two spaces apart.
pub(crate) fn render_table(header: &[&str], right_aligned: &[bool], rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in std::iter::once(header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()).chain(rows) {
        let cells: Vec<String> =
            row.iter()
                .enumerate()
                .map(|(i, c)| {
                    if right_aligned[i] { format!("{c:>w$}", w = widths[i]) } else { format!("{c:<w$}", w = widths[i]) }
                })
                .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// The devices a container can ask for by name, in the spec's order: every one but `all`.
pub fn slice_names(spec: &Spec) -> Vec<String> {
    spec.devices.iter().map(|d| d.name.clone()).filter(|n| n != spec::ALL_DEVICE).collect()
}

/// Keeps Docker Swarm's `gpuslice=…` generic resources in `daemon_json` in step with the
/// spec's slices, where `setup docker --swarm` put them (a file without them is left alone).
/// Returns what changed, for the operator.
pub fn sync_swarm(daemon_json: &Path, spec: &Spec) -> Result<Option<String>> {
    let old = match std::fs::read_to_string(daemon_json) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", daemon_json.display())),
    };
    let slices = slice_names(spec);
    let Some(new) =
        setup::runtime::swarm_resources(&old, &slices).with_context(|| daemon_json.display().to_string())?
    else {
        return Ok(None);
    };
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(daemon_json)?.permissions()) & 0o7777;
    fsutil::write_atomic(daemon_json, new.as_bytes(), mode)
        .with_context(|| format!("writing {}", daemon_json.display()))?;
    Ok(Some(format!(
        "{}: Swarm's gpuslice resources are now {}; restart dockerd for Swarm to see them",
        daemon_json.display(),
        slices.iter().map(|s| format!("gpuslice={s}")).collect::<Vec<_>>().join(" ")
    )))
}

/// Reads and checks a spec file as an engine would load it.
pub fn validate_file(path: &Path) -> Result<Spec> {
    let text = fsutil::read_bounded(path, 16 << 20)
        .with_context(|| format!("reading {}", path.display()))?
        .with_context(|| format!("{} is larger than 16 MiB", path.display()))?;
    let spec: Spec = serde_yaml::from_str(&text).with_context(|| format!("{}: not a CDI spec", path.display()))?;
    cdi::validate(&spec).with_context(|| path.display().to_string())?;
    if !matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "json")) {
        tracing::warn!(path = %path.display(), "engines only read spec files named *.yaml or *.json");
    }
    Ok(spec)
}
