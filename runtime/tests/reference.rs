//! gpuslice-runtime's edit of a container's OCI config against the reference CDI library's
//! (`container-device-interface`), on a spec shaped like the generated one: the same devices,
//! cgroup rules, environment and hooks must come out.

use std::path::PathBuf;

use gpuslice_core::config::Config;
use oci_spec::runtime::Spec as OciSpec;
use serde_json::{Value, json};

const SPEC: &str = r#"cdiVersion: 0.5.0
kind: gpuslice.dev/vgpu
devices:
- name: slice0
  containerEdits:
    env:
    - GPUSLICE_SLICE=slice0
    deviceNodes:
    - path: /dev/nvidia0
      type: c
      major: 195
      minor: 0
    hooks:
    - hookName: createContainer
      path: /usr/bin/gpuslice-hook
      args: [gpuslice-hook, create-container, --slice, slice0, --state-dir=/run/gpuslice]
      env: [PATH=/usr/sbin:/usr/bin:/sbin:/bin]
    - hookName: poststop
      path: /usr/bin/gpuslice-hook
      args: [gpuslice-hook, poststop, --slice, slice0, --state-dir=/run/gpuslice]
      env: [PATH=/usr/sbin:/usr/bin:/sbin:/bin]
- name: slice1
  containerEdits:
    env:
    - GPUSLICE_SLICE=slice1
    deviceNodes:
    - path: /dev/nvidia1
      hostPath: /dev/null
      permissions: rw
    mounts:
    - hostPath: /run/gpuslice/slices/slice1
      containerPath: /run/gpuslice/slices/slice1
      options: [ro, bind]
    hooks:
    - hookName: createContainer
      path: /usr/bin/gpuslice-hook
      args: [gpuslice-hook, create-container, --slice, slice1]
containerEdits:
  deviceNodes:
  - path: /dev/nvidiactl
    type: c
    major: 195
    minor: 255
"#;

fn base_config() -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 1000, "gid": 1000}, "args": ["sh"], "cwd": "/", "env": ["PATH=/bin", "HOME=/root"]},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
    })
}

/// What the reference library makes of `base_config()` with `devices`.
fn reference(dir: &std::path::Path, devices: &[&str]) -> OciSpec {
    let mut spec = container_device_interface::spec::read_spec(&dir.join("gpuslice.yaml"), 1)
        .expect("the reference loads the spec");
    let mut edits = spec.edits().expect("the spec has spec-wide edits");
    for name in devices {
        let device = spec.get_device(name).expect("the reference knows the device").clone();
        edits.append(device.edits()).unwrap();
    }
    let mut oci: OciSpec = serde_json::from_value(base_config()).unwrap();
    edits.apply(&mut oci).expect("the reference applies the edits");
    oci
}

/// What gpuslice-runtime makes of it, asked for through `GPUSLICE_SLICES`.
fn ours(dir: &std::path::Path, devices: &[&str]) -> OciSpec {
    let config = Config { spec_dir: PathBuf::from(dir), ..Config::default() };
    let mut oci = base_config();
    let env = oci["process"]["env"].as_array_mut().unwrap();
    env.push(json!(format!("GPUSLICE_SLICES={}", devices.join(","))));
    let applied = gpuslice_runtime::edit_config(&mut oci, &config).unwrap().unwrap();
    assert_eq!(applied.names, devices);
    // The request itself is ours, not the reference's: take it out before comparing.
    let env = oci["process"]["env"].as_array_mut().unwrap();
    env.retain(|e| !e.as_str().unwrap().starts_with("GPUSLICE_SLICES="));
    serde_json::from_value(oci).unwrap()
}

#[test]
fn edits_match_the_reference_library() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gpuslice.yaml"), SPEC).unwrap();
    for devices in [&["slice0"][..], &["slice1"], &["slice0", "slice1"]] {
        let (want, got) = (reference(dir.path(), devices), ours(dir.path(), devices));
        let at = format!("{devices:?}");
        assert_eq!(got.process().as_ref().unwrap().env(), want.process().as_ref().unwrap().env(), "{at}: env");
        let linux = |s: &OciSpec| s.linux().clone().unwrap();
        assert_eq!(linux(&got).devices(), linux(&want).devices(), "{at}: device nodes");
        assert_eq!(
            linux(&got).resources().as_ref().unwrap().devices(),
            linux(&want).resources().as_ref().unwrap().devices(),
            "{at}: device cgroup rules"
        );
        assert_eq!(got.hooks(), want.hooks(), "{at}: hooks");
        assert_eq!(got.mounts(), want.mounts(), "{at}: mounts");
    }
}
