//! `gpuslice-runtime`: gpuslice's slices for container engines without CDI.
//!
//! Docker before 25 and Docker Swarm, containerd 1.6, podman 3 and old CRI-O cannot read a
//! CDI spec, but all of them run an OCI runtime they are told to: this is one, a drop-in for
//! `runc`. One container start, end to end, with Docker:
//!
//! 1. `docker run --runtime gpuslice -e GPUSLICE_SLICES=slice0 …`: containerd's shim runs
//!    `gpuslice-runtime --root … --log …/log.json --log-format json create --bundle B … ID`.
//! 2. [`args::parse`] finds the command and the bundle; every argument is kept for the real
//!    runtime. Commands other than `create` and `run` (start, state, kill, delete, exec, …)
//!    go to the real runtime untouched: a slice is chosen once, when the container is made.
//! 3. [`edit_bundle`] reads `B/config.json`, and [`select::requested`] finds the slices it
//!    asks for: `GPUSLICE_SLICES`, the annotation `gpuslice.dev/slices`, or Swarm's
//!    `DOCKER_RESOURCE_GPUSLICE` (those `[runtime] sources` allows). None: the bundle is
//!    left alone, so this runtime can be an engine's default.
//! 4. The node's spec (`<spec_dir>/gpuslice.yaml`, written by `gpuslice-cdi generate`) is
//!    read; each name must be one of its devices and its GPU must be in the node. The spec's
//!    own edits and the devices' are applied to the config ([`edits::apply`]): device nodes,
//!    device cgroup rules, `GPUSLICE_SLICE`, and the `createContainer`/`poststop` hooks that
//!    set the slice up, exactly as a CDI engine would have done.
//! 5. The config is written back atomically and the real runtime (`runc`, or `[runtime]
//!    runtime`) is executed in this process with the same arguments. The hook then runs as
//!    it does on the CDI path.
//!
//! A request that cannot be honoured (an unknown slice, a GPU not in this node, a malformed
//! value, two places asking for different slices) stops the container: one line on standard
//! error and in the runtime's `--log`, where containerd and Docker read a runtime's error.
//!
//! The same edit serves podman's and CRI-O's OCI hooks directory: [`precreate`] reads the
//! config on standard input and writes the edited one to standard output, which is what a
//! `precreate` hook does.

pub mod args;
pub mod edits;
pub mod select;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use gpuslice_core::cdi::{self, Device, Spec};
use gpuslice_core::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use gpuslice_core::fsutil;
use serde_json::Value;

pub use args::Invocation;

/// Largest `config.json` or spec read.
const MAX_JSON_LEN: u64 = 16 << 20;

/// Why a container cannot be given its slices, or the real runtime cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Args(#[from] args::ArgsError),
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: ConfigError },
    #[error(transparent)]
    Select(#[from] select::SelectError),
    #[error("reading gpuslice's CDI spec {path}: {reason}; run gpuslice-cdi generate")]
    Spec { path: PathBuf, reason: String },
    #[error("gpuslice's CDI spec {path} is of kind {spec_kind}, but the config says {kind}; run gpuslice-cdi generate")]
    SpecKind { path: PathBuf, spec_kind: String, kind: String },
    #[error("unknown slice {name} (asked for in {from}); this node has {known}")]
    UnknownSlice { name: String, from: String, known: String },
    #[error(transparent)]
    Gpu(#[from] gpuslice_hook::gpu::GpuError),
    #[error(transparent)]
    Edit(#[from] edits::EditError),
    #[error("reading the bundle's {path}: {reason}")]
    Bundle { path: PathBuf, reason: String },
    #[error("writing the bundle's {path}: {source}")]
    WriteBundle { path: PathBuf, source: std::io::Error },
    #[error("running the OCI runtime {runtime}: {source}")]
    Exec { runtime: PathBuf, source: std::io::Error },
    #[error("the OCI runtime {0} is gpuslice-runtime itself; set [runtime] runtime to the real one (e.g. runc)")]
    Loop(PathBuf),
    #[error("reading the container's OCI config on standard input: {0}")]
    Stdin(String),
}

/// The node config at `path`, or `/etc/gpuslice/config.toml` (all defaults when that is missing).
pub fn load_config(path: Option<&Path>) -> Result<Config, Error> {
    let path = path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
    if path == Path::new(DEFAULT_CONFIG_PATH) && !path.exists() {
        return Ok(Config::default());
    }
    Config::load(path).map_err(|source| Error::Config { path: path.to_owned(), source })
}

/// The spec `gpuslice-cdi generate` wrote for `config`.
pub fn load_spec(config: &Config) -> Result<Spec, Error> {
    let path = config.spec_dir.join(cdi::SPEC_FILE);
    let bad = |reason: String| Error::Spec { path: path.clone(), reason };
    let text = fsutil::read_bounded(&path, MAX_JSON_LEN)
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad(format!("larger than {MAX_JSON_LEN} bytes")))?;
    let spec: Spec = serde_yaml::from_str(&text).map_err(|e| bad(e.to_string().replace('\n', " ")))?;
    cdi::validate(&spec).map_err(|e| bad(e.to_string()))?;
    if spec.kind != config.kind {
        return Err(Error::SpecKind { path, spec_kind: spec.kind, kind: config.kind.clone() });
    }
    Ok(spec)
}

/// What was given to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub names: Vec<String>,
    pub from: String,
}

/// Gives `oci` (a container's OCI config) the slices it asks for; `None` when it asks for none
/// (then `oci` is unchanged).
pub fn edit_config(oci: &mut Value, config: &Config) -> Result<Option<Applied>, Error> {
    let Some(request) = select::requested(oci, &config.runtime.sources, &config.kind)? else {
        return Ok(None);
    };
    let spec = load_spec(config)?;
    let mut edits = spec.container_edits.clone();
    for name in &request.names {
        let device = find_device(&spec, name, &request.from)?;
        check_gpus(device)?;
        edits.append(&device.container_edits);
    }
    edits::apply(oci, &edits)?;
    Ok(Some(Applied { names: request.names, from: request.from }))
}

fn find_device<'a>(spec: &'a Spec, name: &str, from: &str) -> Result<&'a Device, Error> {
    spec.devices.iter().find(|d| d.name == name).ok_or_else(|| Error::UnknownSlice {
        name: name.to_owned(),
        from: from.to_owned(),
        known: spec.devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "),
    })
}

/// Checks that the GPU of each slice a device carries is in this node, as the hook will: the
/// spec may have been written on another node, or before a GPU was taken out.
fn check_gpus(device: &Device) -> Result<(), Error> {
    for hook in device.container_edits.hooks.iter().filter(|h| h.hook_name == "createContainer") {
        let arg = |name: &str| hook.args.iter().find_map(|a| a.strip_prefix(name)?.strip_prefix('='));
        let (Some(slice), Some(uuid)) = (slice_of(&hook.args), arg("--gpu-uuid")) else { continue };
        let driver_root = Path::new(arg("--driver-root").unwrap_or("/"));
        gpuslice_hook::gpu::check_present(driver_root, slice, uuid)?;
    }
    Ok(())
}

/// The value of `--slice NAME` (or `--slice=NAME`) in a hook's arguments.
fn slice_of(args: &[String]) -> Option<&str> {
    args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--slice") {
        Some("") => args.get(i + 1).map(String::as_str),
        Some(rest) => rest.strip_prefix('='),
        None => None,
    })
}

/// Gives the bundle's container the slices it asks for, writing its `config.json` back when
/// anything changed.
pub fn edit_bundle(bundle: &Path, config: &Config) -> Result<Option<Applied>, Error> {
    let path = bundle.join("config.json");
    let bad = |reason: String| Error::Bundle { path: path.clone(), reason };
    let text = fsutil::read_bounded(&path, MAX_JSON_LEN)
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad(format!("larger than {MAX_JSON_LEN} bytes")))?;
    let mut oci: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let applied = edit_config(&mut oci, config)?;
    if applied.is_some() {
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o600);
        let json = serde_json::to_vec(&oci).map_err(|e| bad(e.to_string()))?;
        fsutil::write_atomic(&path, &json, mode).map_err(|source| Error::WriteBundle { path: path.clone(), source })?;
    }
    Ok(applied)
}

/// The real runtime as a path to execute: an absolute path as it is, a name looked up in `PATH`.
pub fn resolve_runtime(runtime: &Path) -> Result<PathBuf, Error> {
    let found = if runtime.is_absolute() {
        Some(runtime.to_owned())
    } else {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join(runtime))
            .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    };
    let Some(found) = found else {
        return Err(Error::Exec {
            runtime: runtime.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found in PATH"),
        });
    };
    let me = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    if me.is_some() && found.canonicalize().ok() == me {
        return Err(Error::Loop(found));
    }
    Ok(found)
}

/// One invocation as a runtime: edits the bundle on `create`/`run`, then executes the real
/// runtime with the same arguments. Returns only on failure.
pub fn run(inv: &Invocation) -> Error {
    let config = match load_config(inv.config.as_deref()) {
        Ok(c) => c,
        // Only a create needs the config's slices; for the rest (delete, kill, state) a broken
        // config must not leave containers that can no longer be removed.
        Err(e) if inv.creates() => return e,
        Err(_) => Config::default(),
    };
    if inv.creates() {
        let bundle = inv.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
        if let Err(e) = edit_bundle(&bundle, &config) {
            return e;
        }
    }
    let runtime = match resolve_runtime(&config.runtime.runtime) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let err = std::process::Command::new(&runtime).arg0(&runtime).args(&inv.runtime_args).exec();
    Error::Exec { runtime, source: err }
}

/// Appends `message` to the runtime's log in its format (`json` or `text`), so that the engine
/// reports it: containerd's shim reads the last `"level":"error"` entry of runc's JSON log.
pub fn log_error(inv: &Invocation, message: &str) {
    let Some(log) = &inv.log else { return };
    let line = if inv.log_format.as_deref() == Some("json") {
        serde_json::json!({"level": "error", "msg": message}).to_string()
    } else {
        format!("level=error msg={}", serde_json::Value::String(message.to_owned()))
    };
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "{line}");
    }
}

/// The `precreate` OCI hook (podman's hooks directory): the container's OCI config on
/// `input`, the same config with the slices it asks for (or unchanged) on `output`.
pub fn precreate(
    config_path: Option<&Path>,
    input: impl Read,
    mut output: impl Write,
) -> Result<Option<Applied>, Error> {
    let config = load_config(config_path)?;
    let mut text = String::new();
    input.take(MAX_JSON_LEN + 1).read_to_string(&mut text).map_err(|e| Error::Stdin(e.to_string()))?;
    if text.len() as u64 > MAX_JSON_LEN {
        return Err(Error::Stdin(format!("larger than {MAX_JSON_LEN} bytes")));
    }
    let mut oci: Value = serde_json::from_str(&text).map_err(|e| Error::Stdin(e.to_string()))?;
    let applied = edit_config(&mut oci, &config)?;
    serde_json::to_writer(&mut output, &oci).map_err(|e| Error::Stdin(e.to_string()))?;
    output.flush().map_err(|e| Error::Stdin(e.to_string()))?;
    Ok(applied)
}

/// `precreate-hook [--gpuslice-config=PATH]`: the arguments of the hooks-directory mode.
pub fn precreate_args(args: &[OsString]) -> Result<Option<PathBuf>, args::ArgsError> {
    let inv = args::parse(args.iter().cloned())?;
    Ok(inv.config)
}
