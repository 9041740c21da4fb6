//! The Kubernetes manifests in `deploy/kubernetes/` as the API server would read them.
//!
//! Every YAML document is parsed as its Kubernetes type (`k8s-openapi`, one API version) and
//! written back to JSON; the result must equal the document. `k8s-openapi` skips fields it does
//! not know, so a misspelt or misplaced field shows up as a difference, which the API server's
//! strict field validation (`kubectl apply` warns, `--validate=strict` refuses) would report.
//! Then our own checks: the host paths are core's defaults and mounted at the same paths in the
//! pods (the config names them), the commands parse with the binaries' own options, the image
//! is this version's, and the ConfigMap's config.toml loads.

use std::path::{Path, PathBuf};
use std::process::Command;

use gpuslice_core::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_DEVICE_PLUGIN_DIR};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace};
use serde::Deserialize;
use serde_json::Value;

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every document of every `*.yaml` file: (file name, document).
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir())
        .expect("reading deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

/// The first place where `a` and `b` differ, as a JSON path.
fn difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let here = format!("{path}.{key}");
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = difference(u, v, &here) {
                            return Some(d);
                        }
                    }
                    (Some(_), None) => return Some(format!("{here}: lost (not a field of this type)")),
                    (None, Some(_)) => return Some(format!("{here}: added")),
                    (None, None) => unreachable!(),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (u, v))| difference(u, v, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

/// Parses `doc` as `T` and checks that writing it back loses and changes nothing.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(name: &str, doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    if let Some(d) = difference(doc, &back, "") {
        panic!("{name}: {d}");
    }
    typed
}

struct Objects {
    daemonsets: Vec<DaemonSet>,
    configmaps: Vec<ConfigMap>,
}

fn objects() -> Objects {
    let mut o = Objects { daemonsets: Vec::new(), configmaps: Vec::new() };
    for (file, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let name = format!("{file}: {kind} {}", doc["metadata"]["name"]);
        match (doc["apiVersion"].as_str().unwrap_or_default(), kind.as_str()) {
            ("v1", "Namespace") => {
                round_trip::<Namespace>(&name, &doc);
            }
            ("v1", "ConfigMap") => o.configmaps.push(round_trip(&name, &doc)),
            ("apps/v1", "DaemonSet") => o.daemonsets.push(round_trip(&name, &doc)),
            (api, _) => panic!("{name}: {api} {kind} is not a kind these manifests are checked as"),
        }
    }
    o
}

#[test]
fn manifests_parse_as_kubernetes_objects_without_losing_a_field() {
    let o = objects();
    assert_eq!(o.daemonsets.len(), 1, "one DaemonSet");
    assert_eq!(o.configmaps.len(), 1, "one ConfigMap example");
}

/// The comparison itself: a misspelt field (`mountpath`) and a field in the wrong place are
/// found, so the test above cannot pass by ignoring them.
#[test]
fn round_trip_finds_misspelt_and_misplaced_fields() {
    let (_, doc) = documents().into_iter().find(|(_, d)| d["kind"] == "DaemonSet").unwrap();
    let mut misspelt = doc.clone();
    let mount = &mut misspelt["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0];
    let path = mount.as_object_mut().unwrap().remove("mountPath").unwrap();
    mount["mountpath"] = path;
    let caught = std::panic::catch_unwind(|| round_trip::<DaemonSet>("misspelt", &misspelt));
    assert!(caught.is_err(), "a misspelt mountPath went unnoticed");
    let mut misplaced = doc;
    misplaced["spec"]["template"]["spec"]["privileged"] = Value::Bool(true);
    let caught = std::panic::catch_unwind(|| round_trip::<DaemonSet>("misplaced", &misplaced));
    assert!(caught.is_err(), "privileged in the pod spec went unnoticed");
}

fn all_containers(ds: &DaemonSet) -> Vec<&Container> {
    let pod = ds.spec.template.spec.as_ref().unwrap();
    pod.init_containers.iter().flatten().chain(&pod.containers).collect()
}

#[test]
fn host_paths_are_the_configs_defaults_and_mounted_where_the_config_names_them() {
    let o = objects();
    let ds = &o.daemonsets[0];
    let pod = ds.spec.template.spec.as_ref().unwrap();
    let defaults = Config::default();
    let config_dir = Path::new(DEFAULT_CONFIG_PATH).parent().unwrap();
    let expected = [
        ("config", config_dir),
        ("cdi-specs", defaults.spec_dir.as_path()),
        ("state", defaults.state_dir.as_path()),
        ("device-plugins", Path::new(DEFAULT_DEVICE_PLUGIN_DIR)),
    ];
    assert_eq!(defaults.kubernetes.device_plugin_dir, Path::new(DEFAULT_DEVICE_PLUGIN_DIR));
    for (volume, path) in expected {
        let v = pod.volumes.iter().flatten().find(|v| v.name == volume).unwrap_or_else(|| panic!("no volume {volume}"));
        let host = v.host_path.as_ref().unwrap_or_else(|| panic!("volume {volume} is not a hostPath"));
        assert_eq!(Path::new(&host.path), path, "volume {volume}");
        for c in all_containers(ds) {
            for m in c.volume_mounts.iter().flatten().filter(|m| m.name == volume) {
                assert_eq!(Path::new(&m.mount_path), path, "{}: the mount of {volume}", c.name);
            }
        }
    }
    // The plugin reads the config, spec and state and serves in the kubelet's directory.
    let plugin = &pod.containers[0];
    for volume in ["config", "cdi-specs", "state", "device-plugins", "driver-lib"] {
        assert!(
            plugin.volume_mounts.iter().flatten().any(|m| m.name == volume),
            "the plugin container does not mount {volume}"
        );
    }
    // generate mounts a tmpfs on the state dir, which the host and the plugin must see.
    let generate = all_containers(ds).into_iter().find(|c| c.name == "generate").expect("an init container generate");
    let state = generate.volume_mounts.iter().flatten().find(|m| m.name == "state").unwrap();
    assert_eq!(state.mount_propagation.as_deref(), Some("Bidirectional"));
    assert_eq!(generate.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    // GPUSLICE_NVML_LIB lies in the driver's library directory as each container mounts it.
    for c in all_containers(ds) {
        let Some(lib) = c.env.iter().flatten().find(|e| e.name == "GPUSLICE_NVML_LIB") else { continue };
        let lib = Path::new(lib.value.as_deref().unwrap());
        let dir = c.volume_mounts.iter().flatten().find(|m| m.name == "driver-lib").map(|m| m.mount_path.as_str());
        assert_eq!(lib.parent().and_then(Path::to_str), dir, "{}: GPUSLICE_NVML_LIB", c.name);
    }
}

#[test]
fn images_are_this_version() {
    let o = objects();
    for c in all_containers(&o.daemonsets[0]) {
        let image = c.image.as_deref().unwrap();
        assert_eq!(image, format!("ghcr.io/gpuslice/gpuslice:{}", env!("CARGO_PKG_VERSION")), "{}", c.name);
    }
}

/// `gpuslice-cdi` is another package's binary: `cargo test --workspace` builds it beside this
/// test's (target/<profile>/), as `cargo build` does.
fn gpuslice_cdi() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("gpuslice-cdi");
    assert!(bin.exists(), "{} not built: run `cargo build -p gpuslice-cdi` (or cargo test --workspace)", bin.display());
    bin
}

/// Runs `program` with the manifest's arguments and `--help` last: clap reads the arguments
/// before it, so an unknown option or a bad value fails, and the help stops it from running.
fn parses(program: &Path, args: &[String]) -> Result<(), String> {
    let out = Command::new(program).args(args).arg("--help").output().unwrap();
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Usage:") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn commands_parse_with_the_binaries_options() {
    let o = objects();
    let mut checked = 0;
    for c in all_containers(&o.daemonsets[0]) {
        let command = c
            .command
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no command (the image's entrypoint is not checked)", c.name));
        let args = c.args.clone().unwrap_or_default();
        let program = match command.as_slice() {
            [p] if p == "/usr/bin/gpuslice-device-plugin" => {
                PathBuf::from(env!("CARGO_BIN_EXE_gpuslice-device-plugin"))
            }
            [p] if p == "/usr/bin/gpuslice-cdi" => gpuslice_cdi(),
            [sh, dash_c] if sh == "/bin/sh" && dash_c == "-c" => {
                // A shell script: its syntax.
                let out = Command::new("sh").arg("-n").arg("-c").args(&args).output().unwrap();
                assert!(out.status.success(), "{}: {}", c.name, String::from_utf8_lossy(&out.stderr));
                checked += 1;
                continue;
            }
            other => panic!("{}: {other:?} is not a command of ours", c.name),
        };
        parses(&program, &args).unwrap_or_else(|e| panic!("{}: {command:?} {args:?}: {e}", c.name));
        checked += 1;
    }
    assert_eq!(checked, 3, "the config copy, generate and the plugin");
    // The check can fail: a misspelt option does.
    assert!(parses(&gpuslice_cdi(), &["generate".to_owned(), "--confg".to_owned(), "x".to_owned()]).is_err());
    assert!(
        parses(Path::new(env!("CARGO_BIN_EXE_gpuslice-device-plugin")), &["--kubelet-dir".to_owned(), "x".to_owned()])
            .is_err()
    );
}

#[test]
fn configmap_example_loads_as_a_node_config() {
    let o = objects();
    let cm = &o.configmaps[0];
    let text = cm.data.as_ref().and_then(|d| d.get("config.toml")).expect("data config.toml");
    let config = Config::parse(text).unwrap_or_else(|e| panic!("the ConfigMap's config.toml: {e}"));
    config.validate().unwrap();
    assert_eq!(config.spec_dir, Config::default().spec_dir, "the DaemonSet mounts the default spec_dir");
    assert_eq!(config.state_dir, Config::default().state_dir, "the DaemonSet mounts the default state_dir");
}
