//! `setup docker|containerd --runtime` and `setup docker --swarm`: registering
//! `gpuslice-runtime` for engines without CDI, as pure text-to-text edits like the CDI ones.
//!
//! - Docker: `"runtimes": {"gpuslice": {"path": "/usr/bin/gpuslice-runtime"}}`, so that
//!   `docker run --runtime gpuslice -e GPUSLICE_SLICES=slice0` works on any Docker.
//! - Docker Swarm: services cannot take devices, but Swarm hands out *generic resources*: the
//!   node advertises `node-generic-resources: ["gpuslice=slice0", "gpuslice=slice1", …]`, a
//!   service asks with `--generic-resource gpuslice=1`, and each task's container gets
//!   `DOCKER_RESOURCE_GPUSLICE=<the slices Swarm assigned it>`. gpuslice-runtime, made the
//!   default runtime (`"default-runtime": "gpuslice"`), reads that variable. [`swarm_resources`]
//!   keeps the list in step with the spec whenever `generate` changes the slices.
//! - containerd 1.6 (and later): a runtime `gpuslice` of type `io.containerd.runc.v2` whose
//!   `BinaryName` is gpuslice-runtime, passing the `gpuslice.dev/*` annotations through to the
//!   OCI config (the CRI plugin drops every annotation it is not told to pass), with runc's
//!   `SystemdCgroup` copied so that both runtimes use the same cgroup driver. Pods choose it
//!   with a RuntimeClass whose handler is `gpuslice`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use toml_edit::{Array, DocumentMut, Item, value};

use super::table_in;

/// The runtime's name in the engines' configs (and the RuntimeClass handler).
pub const RUNTIME_NAME: &str = "gpuslice";
/// Where the packages install gpuslice-runtime.
pub const DEFAULT_RUNTIME_BINARY: &str = "/usr/bin/gpuslice-runtime";
/// The generic resource kind Swarm schedules; tasks see `DOCKER_RESOURCE_GPUSLICE`.
pub const GENERIC_RESOURCE: &str = "gpuslice";
/// containerd's default runtime, which it configures itself only when the file names none.
const DEFAULT_CONTAINERD_RUNTIME: &str = "runc";
/// The annotations containerd passes through to the OCI config.
pub const ANNOTATIONS: &str = "gpuslice.dev/*";

/// `daemon.json` with the runtime registered and, with `swarm` (the node's slices), made the
/// default and its slices advertised to Swarm; `None` when it is so already.
pub fn docker(old: &str, binary: &Path, swarm: Option<&[String]>) -> Result<Option<String>> {
    let mut root: Value =
        if old.trim().is_empty() { json!({}) } else { serde_json::from_str(old).context("not valid JSON")? };
    let Some(obj) = root.as_object_mut() else { bail!("not a JSON object") };
    let mut changed = false;
    let runtimes = obj.entry("runtimes").or_insert_with(|| json!({}));
    let Some(runtimes) = runtimes.as_object_mut() else { bail!("\"runtimes\" is not an object") };
    let want = json!({"path": binary.display().to_string()});
    if runtimes.get(RUNTIME_NAME) != Some(&want) {
        runtimes.insert(RUNTIME_NAME.to_owned(), want);
        changed = true;
    }
    if let Some(slices) = swarm {
        if obj.get("default-runtime").and_then(Value::as_str) != Some(RUNTIME_NAME) {
            obj.insert("default-runtime".to_owned(), json!(RUNTIME_NAME));
            changed = true;
        }
        changed |= swarm_resources_in(obj, slices)?;
    }
    Ok(changed.then(|| serde_json::to_string_pretty(&root).map(|s| s + "\n")).transpose()?)
}

/// Replaces the `gpuslice=…` entries of `node-generic-resources` with one per slice; whether
/// that changed anything.
fn swarm_resources_in(obj: &mut serde_json::Map<String, Value>, slices: &[String]) -> Result<bool> {
    let list = obj.entry("node-generic-resources").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else { bail!("\"node-generic-resources\" is not a list") };
    let prefix = format!("{GENERIC_RESOURCE}=");
    let mut new: Vec<Value> =
        list.iter().filter(|v| !v.as_str().is_some_and(|s| s.starts_with(&prefix))).cloned().collect();
    new.extend(slices.iter().map(|s| json!(format!("{prefix}{s}"))));
    if *list == new {
        return Ok(false);
    }
    *list = new;
    Ok(true)
}

/// `daemon.json` with its Swarm slices (`gpuslice=…` in `node-generic-resources`) made
/// `slices`; `None` when it advertises no gpuslice resource (Swarm was not set up: nothing to
/// keep in step) or lists exactly these already.
pub fn swarm_resources(old: &str, slices: &[String]) -> Result<Option<String>> {
    let mut root: Value = serde_json::from_str(old).context("not valid JSON")?;
    let Some(obj) = root.as_object_mut() else { bail!("not a JSON object") };
    let prefix = format!("{GENERIC_RESOURCE}=");
    let advertised = obj
        .get("node-generic-resources")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|v| v.as_str().is_some_and(|s| s.starts_with(&prefix))));
    if !advertised {
        return Ok(None);
    }
    if !swarm_resources_in(obj, slices)? {
        return Ok(None);
    }
    Ok(Some(serde_json::to_string_pretty(&root)? + "\n"))
}

/// containerd's `config.toml` with the runtime `gpuslice`; `None` when it has it already.
pub fn containerd(old: &str, binary: &Path) -> Result<Option<String>> {
    let mut doc: DocumentMut = old.parse().context("not valid TOML")?;
    let version = super::containerd_version(&mut doc, old)?;
    let plugin = super::cri_plugin(version);
    let plugins = table_in(doc.as_table_mut(), "plugins")?;
    let cri = table_in(plugins, plugin)?;
    let containerd = table_in(cri, "containerd")?;
    let default_runtime =
        containerd.get("default_runtime_name").and_then(Item::as_str).unwrap_or(DEFAULT_CONTAINERD_RUNTIME).to_owned();
    let runtimes = table_in(containerd, "runtimes")?;
    let systemd_cgroup = runtimes
        .get("runc")
        .and_then(|r| r.get("options"))
        .and_then(|o| o.get("SystemdCgroup"))
        .and_then(Item::as_bool);
    let mut changed = false;
    // containerd fills in its default runtime `runc` only while the file names no runtime at
    // all: once `gpuslice` is there, a file without `runc` would leave the CRI plugin with no
    // default runtime, and it would not load.
    if default_runtime == DEFAULT_CONTAINERD_RUNTIME && !runtimes.contains_key(DEFAULT_CONTAINERD_RUNTIME) {
        let runc = table_in(runtimes, DEFAULT_CONTAINERD_RUNTIME)?;
        runc["runtime_type"] = value("io.containerd.runc.v2");
        changed = true;
    }
    let ours = table_in(runtimes, RUNTIME_NAME)?;
    if ours.get("runtime_type").and_then(Item::as_str) != Some("io.containerd.runc.v2") {
        ours["runtime_type"] = value("io.containerd.runc.v2");
        changed = true;
    }
    for key in ["pod_annotations", "container_annotations"] {
        let has =
            ours.get(key).and_then(Item::as_array).is_some_and(|a| a.iter().any(|v| v.as_str() == Some(ANNOTATIONS)));
        if !has {
            match ours.get_mut(key).and_then(Item::as_array_mut) {
                Some(list) => list.push(ANNOTATIONS),
                None => ours[key] = value([ANNOTATIONS].into_iter().collect::<Array>()),
            }
            changed = true;
        }
    }
    let options = table_in(ours, "options")?;
    let binary = binary.display().to_string();
    if options.get("BinaryName").and_then(Item::as_str) != Some(binary.as_str()) {
        options["BinaryName"] = value(binary);
        changed = true;
    }
    if let Some(systemd) = systemd_cgroup
        && options.get("SystemdCgroup").and_then(Item::as_bool) != Some(systemd)
    {
        options["SystemdCgroup"] = value(systemd);
        changed = true;
    }
    Ok(changed.then(|| doc.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin() -> &'static Path {
        Path::new(DEFAULT_RUNTIME_BINARY)
    }

    fn slices(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn docker_runtime_is_registered_once() {
        let new = docker(r#"{"features": {"cdi": true}}"#, bin(), None).unwrap().unwrap();
        let v: Value = serde_json::from_str(&new).unwrap();
        assert_eq!(v["runtimes"]["gpuslice"], json!({"path": "/usr/bin/gpuslice-runtime"}));
        assert_eq!(v["features"]["cdi"], true);
        assert!(v.get("default-runtime").is_none(), "only --swarm makes it the default");
        assert_eq!(docker(&new, bin(), None).unwrap(), None);
    }

    #[test]
    fn docker_swarm_advertises_each_slice_and_keeps_other_resources() {
        let old = r#"{"node-generic-resources": ["NVIDIA-GPU=GPU-1", "gpuslice=slice9"], "runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}"#;
        let new = docker(old, bin(), Some(&slices(&["slice0", "slice1"]))).unwrap().unwrap();
        let v: Value = serde_json::from_str(&new).unwrap();
        assert_eq!(v["default-runtime"], "gpuslice");
        assert_eq!(v["node-generic-resources"], json!(["NVIDIA-GPU=GPU-1", "gpuslice=slice0", "gpuslice=slice1"]));
        assert_eq!(v["runtimes"]["nvidia"]["path"], "nvidia-container-runtime");
        assert_eq!(docker(&new, bin(), Some(&slices(&["slice0", "slice1"]))).unwrap(), None);
    }

    #[test]
    fn swarm_resources_follow_the_slices_only_where_swarm_was_set_up() {
        assert_eq!(swarm_resources(r#"{"features": {"cdi": true}}"#, &slices(&["slice0"])).unwrap(), None);
        let old = r#"{"node-generic-resources": ["gpuslice=slice0", "gpuslice=slice1", "other=x"]}"#;
        let new = swarm_resources(old, &slices(&["slice0", "slice1", "slice2"])).unwrap().unwrap();
        let v: Value = serde_json::from_str(&new).unwrap();
        assert_eq!(
            v["node-generic-resources"],
            json!(["other=x", "gpuslice=slice0", "gpuslice=slice1", "gpuslice=slice2"])
        );
        assert_eq!(swarm_resources(&new, &slices(&["slice0", "slice1", "slice2"])).unwrap(), None);
        assert!(swarm_resources("[", &slices(&["slice0"])).is_err());
    }

    #[test]
    fn containerd_runtime_for_version_2_with_runc_cgroup_driver() {
        let old = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n    SystemdCgroup = true\n";
        let new = containerd(old, bin()).unwrap().unwrap();
        let doc: toml::Table = toml::from_str(&new).unwrap();
        let rt = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["gpuslice"];
        assert_eq!(rt["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(rt["options"]["BinaryName"].as_str(), Some("/usr/bin/gpuslice-runtime"));
        assert_eq!(rt["options"]["SystemdCgroup"].as_bool(), Some(true));
        assert_eq!(rt["pod_annotations"].as_array().unwrap()[0].as_str(), Some("gpuslice.dev/*"));
        assert_eq!(rt["container_annotations"].as_array().unwrap()[0].as_str(), Some("gpuslice.dev/*"));
        assert_eq!(containerd(&new, bin()).unwrap(), None);
        assert!(new.contains("SystemdCgroup = true"), "runc's own options are kept: {new}");
    }

    #[test]
    fn containerd_runtime_in_a_new_file_and_in_version_1() {
        let new = containerd("", bin()).unwrap().unwrap();
        assert!(new.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gpuslice]"), "{new}");
        assert!(!new.contains("SystemdCgroup"), "no cgroup driver to copy: {new}");
        // The default runtime stays defined, or the CRI plugin would not load.
        let doc: toml::Table = toml::from_str(&new).unwrap();
        let runtimes = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert_eq!(runtimes["runc"]["runtime_type"].as_str(), Some("io.containerd.runc.v2"), "{new}");
        assert_eq!(containerd(&new, bin()).unwrap(), None);
        // Another default runtime is the operator's: nothing is added for it.
        let other = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"crun\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        let new = containerd(other, bin()).unwrap().unwrap();
        assert!(!new.contains("runtimes.runc]"), "{new}");
        let new = containerd("root = \"/var/lib/containerd\"\n", bin()).unwrap().unwrap();
        assert!(new.contains("[plugins.cri.containerd.runtimes.gpuslice]"), "{new}");
    }
}
