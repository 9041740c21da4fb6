//! Applying CDI container edits to an OCI runtime config, as a CDI-aware engine does.
//!
//! The config is edited as JSON (`serde_json::Value`), so every field the engine wrote and
//! this code does not know survives untouched. The rules are the reference CDI library's
//! (`ContainerEdits.Apply`), checked against the `container-device-interface` crate by this
//! crate's tests:
//!
//! - `env`: each `KEY=VALUE` replaces the container's `KEY`, or is appended;
//! - `deviceNodes`: type, major and minor are read from the host node when the spec leaves
//!   them out; the node replaces one at the same path in `linux.devices`, takes the process's
//!   uid/gid when it has none and they are not root's, and a `b`/`c` node is allowed in the
//!   device cgroup (`linux.resources.devices`, access from `permissions`, default `rwm`);
//! - `mounts`: each replaces a mount at the same destination, or is appended;
//! - `hooks`: appended to their stage;
//! - `additionalGids`: added to `process.user.additionalGids` (0 is skipped).
//!
//! Applying the same edits twice changes nothing the second time (a container that asked for
//! a slice both through CDI and through gpuslice-runtime gets it once): an identical cgroup
//! rule, hook or GID is not added again.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use gpuslice_core::cdi::{ContainerEdits, DeviceNode, Hook, Mount};
use serde_json::{Map, Value, json};

/// Why edits cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the container's OCI config is not a JSON object")]
    NotObject,
    #[error("the container's OCI config has a malformed {0}")]
    Shape(&'static str),
    #[error("device node {path}: reading {host_path}: {source}")]
    Stat { path: String, host_path: String, source: std::io::Error },
    #[error("device node {path}: {host_path} is not a device node")]
    NotADevice { path: String, host_path: String },
    #[error("device node {path}: the spec says type {spec_type}, but {host_path} is type {host_type}")]
    TypeMismatch { path: String, host_path: String, spec_type: String, host_type: String },
    #[error("the spec's edits use {0}, which gpuslice-runtime does not apply")]
    Unsupported(&'static str),
}

/// Applies `edits` to `config`.
pub fn apply(config: &mut Value, edits: &ContainerEdits) -> Result<(), EditError> {
    if !config.is_object() {
        return Err(EditError::NotObject);
    }
    if edits.intel_rdt.is_some() {
        return Err(EditError::Unsupported("intelRdt"));
    }
    if !edits.net_devices.is_empty() {
        return Err(EditError::Unsupported("netDevices"));
    }
    if !edits.env.is_empty() {
        let env = array_at(config, &["process", "env"], "process.env")?;
        for entry in &edits.env {
            let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            let same_key = |v: &Value| v.as_str().is_some_and(|s| s.split_once('=').map_or(s, |(k, _)| k) == key);
            match env.iter().position(same_key) {
                Some(i) => env[i] = Value::String(entry.clone()),
                None => env.push(Value::String(entry.clone())),
            }
        }
    }
    let (uid, gid) = process_ids(config);
    for node in &edits.device_nodes {
        let (kind, major, minor) = fill_missing(node)?;
        let mut dev = Map::new();
        dev.insert("path".into(), json!(node.path));
        dev.insert("type".into(), json!(kind));
        if kind != "p" {
            dev.insert("major".into(), json!(major));
            dev.insert("minor".into(), json!(minor));
        }
        if let Some(mode) = node.file_mode {
            dev.insert("fileMode".into(), json!(mode));
        }
        match (node.uid, uid) {
            (Some(u), _) => _ = dev.insert("uid".into(), json!(u)),
            (None, Some(u)) if u > 0 => _ = dev.insert("uid".into(), json!(u)),
            _ => {}
        }
        match (node.gid, gid) {
            (Some(g), _) => _ = dev.insert("gid".into(), json!(g)),
            (None, Some(g)) if g > 0 => _ = dev.insert("gid".into(), json!(g)),
            _ => {}
        }
        if kind == "b" || kind == "c" {
            let access = match node.permissions.as_deref() {
                None | Some("") => "rwm",
                Some("none") => "",
                Some(p) => p,
            };
            let rule = json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": access});
            let rules = array_at(config, &["linux", "resources", "devices"], "linux.resources.devices")?;
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
        let devices = array_at(config, &["linux", "devices"], "linux.devices")?;
        devices.retain(|d| d.get("path").and_then(Value::as_str) != Some(node.path.as_str()));
        devices.push(Value::Object(dev));
    }
    for m in &edits.mounts {
        let mounts = array_at(config, &["mounts"], "mounts")?;
        mounts.retain(|x| x.get("destination").and_then(Value::as_str) != Some(m.container_path.as_str()));
        mounts.push(mount(m));
    }
    for h in &edits.hooks {
        let hooks = array_at(config, &["hooks", h.hook_name.as_str()], "hooks")?;
        let hook = hook(h);
        if !hooks.contains(&hook) {
            hooks.push(hook);
        }
    }
    if !edits.additional_gids.is_empty() {
        let gids = array_at(config, &["process", "user", "additionalGids"], "process.user.additionalGids")?;
        for gid in edits.additional_gids.iter().filter(|g| **g > 0) {
            if !gids.iter().any(|g| g.as_u64() == Some(u64::from(*gid))) {
                gids.push(json!(gid));
            }
        }
    }
    Ok(())
}

/// The process's uid and gid, when given.
fn process_ids(config: &Value) -> (Option<u64>, Option<u64>) {
    let user = config.get("process").and_then(|p| p.get("user"));
    let id = |k: &str| user.and_then(|u| u.get(k)).and_then(Value::as_u64);
    (id("uid"), id("gid"))
}

/// The array at `path`, created (with the objects on the way) when missing.
fn array_at<'a>(config: &'a mut Value, path: &[&str], what: &'static str) -> Result<&'a mut Vec<Value>, EditError> {
    let mut at = config;
    for (i, key) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let obj = at.as_object_mut().ok_or(EditError::Shape(what))?;
        let slot = obj.entry(*key).or_insert_with(|| if last { json!([]) } else { json!({}) });
        if slot.is_null() {
            *slot = if last { json!([]) } else { json!({}) };
        }
        at = slot;
    }
    at.as_array_mut().ok_or(EditError::Shape(what))
}

/// Type, major and minor of a node: the spec's, or the host node's where the spec leaves
/// them out.
fn fill_missing(node: &DeviceNode) -> Result<(String, i64, i64), EditError> {
    let host_path = node.host_path.as_deref().unwrap_or(&node.path);
    let given = node.kind.as_deref().filter(|k| !k.is_empty());
    if let Some(kind) = given {
        if kind == "p" {
            return Ok((kind.to_owned(), 0, 0));
        }
        if let Some(major) = node.major {
            return Ok((kind.to_owned(), major, node.minor.unwrap_or(0)));
        }
    }
    let meta = std::fs::metadata(Path::new(host_path)).map_err(|source| EditError::Stat {
        path: node.path.clone(),
        host_path: host_path.to_owned(),
        source,
    })?;
    let ft = meta.file_type();
    let host_type = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else if ft.is_fifo() {
        "p"
    } else {
        return Err(EditError::NotADevice { path: node.path.clone(), host_path: host_path.to_owned() });
    };
    if let Some(kind) = given.filter(|k| *k != host_type && !(*k == "u" && host_type == "c")) {
        return Err(EditError::TypeMismatch {
            path: node.path.clone(),
            host_path: host_path.to_owned(),
            spec_type: kind.to_owned(),
            host_type: host_type.to_owned(),
        });
    }
    let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
    let (major, minor) = match node.major {
        Some(major) => (major, node.minor.unwrap_or(0)),
        None => (i64::from(libc::major(rdev)), i64::from(libc::minor(rdev))),
    };
    Ok((given.unwrap_or(host_type).to_owned(), major, minor))
}

fn mount(m: &Mount) -> Value {
    let mut v = Map::new();
    v.insert("destination".into(), json!(m.container_path));
    v.insert("source".into(), json!(m.host_path));
    if let Some(kind) = &m.kind {
        v.insert("type".into(), json!(kind));
    }
    if !m.options.is_empty() {
        v.insert("options".into(), json!(m.options));
    }
    Value::Object(v)
}

fn hook(h: &Hook) -> Value {
    let mut v = Map::new();
    v.insert("path".into(), json!(h.path));
    if !h.args.is_empty() {
        v.insert("args".into(), json!(h.args));
    }
    if !h.env.is_empty() {
        v.insert("env".into(), json!(h.env));
    }
    if let Some(t) = h.timeout {
        v.insert("timeout".into(), json!(t));
    }
    Value::Object(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, major: i64, minor: i64) -> DeviceNode {
        DeviceNode {
            path: path.to_owned(),
            kind: Some("c".to_owned()),
            major: Some(major),
            minor: Some(minor),
            ..DeviceNode::default()
        }
    }

    fn hook_edit(stage: &str) -> Hook {
        Hook {
            hook_name: stage.to_owned(),
            path: "/usr/bin/gpuslice-hook".to_owned(),
            args: vec!["gpuslice-hook".to_owned(), "create-container".to_owned()],
            env: vec!["PATH=/usr/bin".to_owned()],
            timeout: None,
        }
    }

    fn edits() -> ContainerEdits {
        ContainerEdits {
            env: vec!["GPUSLICE_SLICE=slice0".to_owned(), "PATH=/usr/bin".to_owned()],
            device_nodes: vec![node("/dev/nvidia0", 195, 0)],
            hooks: vec![hook_edit("createContainer"), hook_edit("poststop")],
            ..ContainerEdits::default()
        }
    }

    #[test]
    fn an_empty_config_gets_everything() {
        let mut config = json!({});
        apply(&mut config, &edits()).unwrap();
        assert_eq!(config["process"]["env"], json!(["GPUSLICE_SLICE=slice0", "PATH=/usr/bin"]));
        assert_eq!(
            config["linux"]["devices"],
            json!([{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}])
        );
        assert_eq!(
            config["linux"]["resources"]["devices"],
            json!([{"allow": true, "type": "c", "major": 195, "minor": 0, "access": "rwm"}])
        );
        assert_eq!(config["hooks"]["createContainer"][0]["args"][1], "create-container");
        assert_eq!(config["hooks"]["poststop"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn existing_fields_are_kept_or_replaced_by_key() {
        let mut config = json!({
            "ociVersion": "1.0.2",
            "x-unknown": {"kept": true},
            "process": {"env": ["PATH=/bin", "HOME=/root"], "user": {"uid": 1000, "gid": 1000}, "args": ["sh"]},
            "linux": {"devices": [{"path": "/dev/nvidia0", "type": "c", "major": 1, "minor": 1}],
                      "resources": {"devices": [{"allow": false, "access": "rwm"}]}},
            "hooks": {"createContainer": [{"path": "/other"}]},
        });
        apply(&mut config, &edits()).unwrap();
        assert_eq!(config["x-unknown"], json!({"kept": true}));
        assert_eq!(config["process"]["env"], json!(["PATH=/usr/bin", "HOME=/root", "GPUSLICE_SLICE=slice0"]));
        let devices = config["linux"]["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0]["major"], 195);
        assert_eq!((devices[0]["uid"].clone(), devices[0]["gid"].clone()), (json!(1000), json!(1000)));
        assert_eq!(config["linux"]["resources"]["devices"][0], json!({"allow": false, "access": "rwm"}));
        assert_eq!(config["hooks"]["createContainer"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn applying_twice_changes_nothing() {
        let mut once = json!({"process": {"env": []}});
        apply(&mut once, &edits()).unwrap();
        let mut twice = once.clone();
        apply(&mut twice, &edits()).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn missing_node_numbers_come_from_the_host() {
        let mut config = json!({});
        let null = DeviceNode { path: "/dev/null".to_owned(), ..DeviceNode::default() };
        apply(&mut config, &ContainerEdits { device_nodes: vec![null], ..ContainerEdits::default() }).unwrap();
        assert_eq!(config["linux"]["devices"][0], json!({"path": "/dev/null", "type": "c", "major": 1, "minor": 3}));
        let wrong = DeviceNode { path: "/dev/null".to_owned(), kind: Some("b".to_owned()), ..DeviceNode::default() };
        let e = apply(&mut config, &ContainerEdits { device_nodes: vec![wrong], ..ContainerEdits::default() });
        assert!(matches!(e, Err(EditError::TypeMismatch { .. })), "{e:?}");
        let file = DeviceNode { path: "/etc/hostname".to_owned(), ..DeviceNode::default() };
        let e = apply(&mut config, &ContainerEdits { device_nodes: vec![file], ..ContainerEdits::default() });
        assert!(matches!(e, Err(EditError::NotADevice { .. }) | Err(EditError::Stat { .. })), "{e:?}");
    }

    #[test]
    fn a_malformed_config_is_refused() {
        assert!(matches!(apply(&mut json!([]), &edits()), Err(EditError::NotObject)));
        assert!(matches!(apply(&mut json!({"process": {"env": {}}}), &edits()), Err(EditError::Shape(_))));
        assert!(matches!(apply(&mut json!({"linux": 1}), &edits()), Err(EditError::Shape(_))));
    }
}
