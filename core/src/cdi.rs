//! The subset of the Container Device Interface (CDI) spec that gpuslice writes and checks.
//!
//! The types mirror the CDI JSON schema field for field and refuse unknown fields, as the
//! reference Go and Rust libraries do, so a spec that passes [`validate`] loads in every
//! engine. [`minimum_version`] implements the spec's "lowest version the content needs"
//! rule: engines vendor old CDI libraries and reject versions they do not know, so a spec
//! should never claim more than it uses.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The file name of gpuslice's spec in its spec dir.
pub const SPEC_FILE: &str = "gpuslice.yaml";

/// A CDI spec file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

/// One device a container can ask for by `kind=name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub container_edits: ContainerEdits,
}

/// Changes made to a container's OCI spec.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intel_rdt: Option<IntelRdt>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_devices: Vec<NetDevice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IntelRdt {
    #[serde(default, rename = "closID", skip_serializing_if = "Option::is_none")]
    pub clos_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l3_cache_schema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_bw_schema: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemata: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_monitoring: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetDevice {
    pub host_interface_name: String,
    pub name: String,
}

impl ContainerEdits {
    pub fn is_empty(&self) -> bool {
        self == &ContainerEdits::default()
    }

    /// Appends another device's edits, as an engine does when both are requested.
    pub fn append(&mut self, other: &ContainerEdits) {
        extend_unique(&mut self.env, &other.env);
        extend_unique(&mut self.device_nodes, &other.device_nodes);
        extend_unique(&mut self.hooks, &other.hooks);
        extend_unique(&mut self.mounts, &other.mounts);
        extend_unique(&mut self.additional_gids, &other.additional_gids);
        extend_unique(&mut self.net_devices, &other.net_devices);
        if self.intel_rdt.is_none() {
            self.intel_rdt.clone_from(&other.intel_rdt);
        }
    }
}

fn extend_unique<T: PartialEq + Clone>(dst: &mut Vec<T>, src: &[T]) {
    for item in src {
        if !dst.contains(item) {
            dst.push(item.clone());
        }
    }
}

/// A CDI spec version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    /// The lowest version gpuslice writes: `hostPath` on device nodes needs it.
    pub const FLOOR: Version = Version(0, 5, 0);
    /// Versions the reference library accepts, oldest first.
    pub const KNOWN: &[Version] = &[
        Version(0, 1, 0),
        Version(0, 2, 0),
        Version(0, 3, 0),
        Version(0, 4, 0),
        Version(0, 5, 0),
        Version(0, 6, 0),
        Version(0, 7, 0),
        Version(0, 8, 0),
        Version(1, 0, 0),
        Version(1, 1, 0),
    ];
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl FromStr for Version {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::Version(s.to_owned());
        let mut parts = s.strip_prefix('v').unwrap_or(s).split('.');
        let mut next = || parts.next().and_then(|p| p.parse::<u16>().ok()).ok_or_else(bad);
        let v = Version(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }
}

/// Why a spec, kind or name is not valid CDI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("`{0}` is not a CDI version (expected major.minor.patch)")]
    Version(String),
    #[error("cdiVersion {0} is not a released CDI version")]
    UnknownVersion(Version),
    #[error("cdiVersion {declared} is too low: the spec's content needs at least {needed} ({why})")]
    VersionTooLow { declared: Version, needed: Version, why: &'static str },
    #[error("kind `{0}` must be `vendor/class`, e.g. gpuslice.dev/vgpu")]
    KindShape(String),
    #[error(
        "kind `{kind}`: {part} `{value}` must start with a letter, end with a letter or digit, and use only letters, digits, `_`, `.` and `-`"
    )]
    KindPart { kind: String, part: &'static str, value: String },
    #[error(
        "device name `{0}` must start and end with a letter or digit and use only letters, digits, `_`, `.`, `:` and `-`"
    )]
    DeviceName(String),
    #[error("the spec has no devices")]
    NoDevices,
    #[error("device `{0}` is defined twice")]
    DuplicateDevice(String),
    #[error("device `{0}` has no container edits")]
    EmptyDevice(String),
    #[error("{at}: env entry `{entry}` must be KEY=VALUE")]
    Env { at: String, entry: String },
    #[error("{at}: device node has no path")]
    NodePath { at: String },
    #[error("{at}: device node `{path}` has type `{kind}`; expected b, c, u or p")]
    NodeType { at: String, path: String, kind: String },
    #[error("{at}: device node `{path}` has permissions `{perms}`; expected a combination of r, w and m")]
    NodePermissions { at: String, path: String, perms: String },
    #[error(
        "{at}: hook name `{name}` is not one of createRuntime, createContainer, startContainer, poststart, poststop, prestart"
    )]
    HookName { at: String, name: String },
    #[error("{at}: hook path `{path}` must be absolute")]
    HookPath { at: String, path: String },
    #[error("{at}: hook timeout {timeout} must be greater than 0")]
    HookTimeout { at: String, timeout: i64 },
    #[error("{at}: mount needs both hostPath and containerPath")]
    Mount { at: String },
}

const HOOK_NAMES: &[&str] =
    &["createRuntime", "createContainer", "startContainer", "poststart", "poststop", "prestart"];

/// Checks a `vendor/class` kind.
pub fn validate_kind(kind: &str) -> Result<(), SpecError> {
    let Some((vendor, class)) = kind.split_once('/') else {
        return Err(SpecError::KindShape(kind.to_owned()));
    };
    for (part, value) in [("vendor", vendor), ("class", class)] {
        let bytes = value.as_bytes();
        let ok = bytes.first().is_some_and(u8::is_ascii_alphabetic)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(SpecError::KindPart { kind: kind.to_owned(), part, value: value.to_owned() });
        }
    }
    Ok(())
}

/// Checks a device name (the part after `=`).
pub fn validate_device_name(name: &str) -> Result<(), SpecError> {
    let bytes = name.as_bytes();
    let ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok { Ok(()) } else { Err(SpecError::DeviceName(name.to_owned())) }
}

/// The lowest CDI version that can carry this spec's content, and the feature that needs it.
pub fn minimum_version(spec: &Spec) -> (Version, &'static str) {
    let edits = || std::iter::once(&spec.container_edits).chain(spec.devices.iter().map(|d| &d.container_edits));
    let checks: [(Version, &'static str, bool); 6] = [
        (
            Version(1, 1, 0),
            "netDevices or intelRdt schemata/enableMonitoring",
            edits().any(|e| {
                !e.net_devices.is_empty()
                    || e.intel_rdt.as_ref().is_some_and(|r| !r.schemata.is_empty() || r.enable_monitoring.is_some())
            }),
        ),
        (
            Version(0, 7, 0),
            "intelRdt or additionalGids",
            edits().any(|e| e.intel_rdt.is_some() || !e.additional_gids.is_empty()),
        ),
        (
            Version(0, 6, 0),
            "annotations or a `.` in the class",
            !spec.annotations.is_empty()
                || spec.devices.iter().any(|d| !d.annotations.is_empty())
                || spec.kind.split_once('/').is_some_and(|(_, class)| class.contains('.')),
        ),
        (
            Version(0, 5, 0),
            "device node hostPath or a device name starting with a digit",
            edits().any(|e| e.device_nodes.iter().any(|n| n.host_path.is_some()))
                || spec.devices.iter().any(|d| d.name.starts_with(|c: char| c.is_ascii_digit())),
        ),
        (Version(0, 4, 0), "a mount type", edits().any(|e| e.mounts.iter().any(|m| m.kind.is_some()))),
        (Version(0, 3, 0), "the base schema", true),
    ];
    checks
        .into_iter()
        .find(|(_, _, needed)| *needed)
        .map_or((Version(0, 3, 0), "the base schema"), |(v, why, _)| (v, why))
}

/// Checks a spec the way the reference CDI library does when it loads one.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    let declared: Version = spec.cdi_version.parse()?;
    if !Version::KNOWN.contains(&declared) {
        return Err(SpecError::UnknownVersion(declared));
    }
    let (needed, why) = minimum_version(spec);
    if declared < needed {
        return Err(SpecError::VersionTooLow { declared, needed, why });
    }
    validate_kind(&spec.kind)?;
    if spec.devices.is_empty() {
        return Err(SpecError::NoDevices);
    }
    validate_edits("containerEdits", &spec.container_edits)?;
    let mut seen = HashSet::new();
    for d in &spec.devices {
        validate_device_name(&d.name)?;
        if !seen.insert(d.name.as_str()) {
            return Err(SpecError::DuplicateDevice(d.name.clone()));
        }
        if d.container_edits.is_empty() {
            return Err(SpecError::EmptyDevice(d.name.clone()));
        }
        validate_edits(&format!("device {}", d.name), &d.container_edits)?;
    }
    Ok(())
}

fn validate_env(at: &str, env: &[String]) -> Result<(), SpecError> {
    match env.iter().find(|e| e.find('=').is_none_or(|i| i == 0)) {
        Some(entry) => Err(SpecError::Env { at: at.to_owned(), entry: entry.clone() }),
        None => Ok(()),
    }
}

fn validate_edits(at: &str, e: &ContainerEdits) -> Result<(), SpecError> {
    let at_s = || at.to_owned();
    validate_env(at, &e.env)?;
    for n in &e.device_nodes {
        if n.path.is_empty() {
            return Err(SpecError::NodePath { at: at_s() });
        }
        if let Some(kind) = n.kind.as_ref().filter(|k| !matches!(k.as_str(), "b" | "c" | "u" | "p")) {
            return Err(SpecError::NodeType { at: at_s(), path: n.path.clone(), kind: kind.clone() });
        }
        let perms_ok = |p: &String| p == "none" || p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
        if let Some(p) = n.permissions.as_ref().filter(|p| !perms_ok(p)) {
            return Err(SpecError::NodePermissions { at: at_s(), path: n.path.clone(), perms: p.clone() });
        }
    }
    for h in &e.hooks {
        if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
            return Err(SpecError::HookName { at: at_s(), name: h.hook_name.clone() });
        }
        if !h.path.starts_with('/') {
            return Err(SpecError::HookPath { at: at_s(), path: h.path.clone() });
        }
        if let Some(t) = h.timeout.filter(|t| *t <= 0) {
            return Err(SpecError::HookTimeout { at: at_s(), timeout: t });
        }
        validate_env(&format!("{at} hook {}", h.hook_name), &h.env)?;
    }
    for m in &e.mounts {
        if m.host_path.is_empty() || m.container_path.is_empty() {
            return Err(SpecError::Mount { at: at_s() });
        }
    }
    Ok(())
}
