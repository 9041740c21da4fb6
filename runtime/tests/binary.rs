//! The real `gpuslice-runtime` binary in front of a fake runc that records how it was run:
//! every argument but ours reaches it unchanged, only create/run edit the bundle, and a
//! refusal stops before the runtime runs, with one line on stderr and in runc's JSON log.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const SPEC: &str = r#"cdiVersion: 0.5.0
kind: gpuslice.dev/vgpu
devices:
- name: slice0
  containerEdits:
    env: [GPUSLICE_SLICE=slice0]
    deviceNodes:
    - {path: /dev/nvidia0, type: c, major: 195, minor: 0}
    hooks:
    - hookName: createContainer
      path: /usr/bin/gpuslice-hook
      args: [gpuslice-hook, create-container, --slice, slice0, --gpu-uuid=GPU-aaaa, --driver-root=@ROOT@]
    - hookName: poststop
      path: /usr/bin/gpuslice-hook
      args: [gpuslice-hook, poststop, --slice, slice0]
- name: all
  containerEdits:
    env: [GPUSLICE_SLICE=slice0]
    deviceNodes:
    - {path: /dev/nvidia0, type: c, major: 195, minor: 0}
containerEdits:
  deviceNodes:
  - {path: /dev/nvidiactl, type: c, major: 195, minor: 255}
"#;

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    /// A config, a spec, a driver root listing GPU-aaaa, a fake runc, and a bundle whose
    /// process has `env`.
    fn new(env: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("cdi")).unwrap();
        std::fs::write(root.join("cdi/gpuslice.yaml"), SPEC.replace("@ROOT@", root.join("driver").to_str().unwrap()))
            .unwrap();
        let gpu = root.join("driver/proc/driver/nvidia/gpus/0000:01:00.0");
        std::fs::create_dir_all(&gpu).unwrap();
        std::fs::write(gpu.join("information"), "Model: x\nGPU UUID: \t GPU-aaaa\n").unwrap();
        let runc = root.join("fake-runc");
        std::fs::write(&runc, format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}/runc-args'\nexit 7\n", root.display()))
            .unwrap();
        std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            root.join("gpuslice.toml"),
            format!("spec_dir = \"{}/cdi\"\n[runtime]\nruntime = \"{}\"\n", root.display(), runc.display()),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("bundle")).unwrap();
        let config =
            json!({"ociVersion": "1.0.2", "process": {"env": env, "args": ["sh"]}, "root": {"path": "rootfs"}});
        std::fs::write(root.join("bundle/config.json"), config.to_string()).unwrap();
        Node { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_gpuslice-runtime"))
            .arg(format!("--gpuslice-config={}", self.root().join("gpuslice.toml").display()))
            .args(args)
            .output()
            .unwrap()
    }

    fn bundle(&self) -> PathBuf {
        self.root().join("bundle")
    }

    fn config(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.bundle().join("config.json")).unwrap()).unwrap()
    }

    /// What the fake runc was run with; `None` when it did not run.
    fn runc_args(&self) -> Option<Vec<String>> {
        std::fs::read_to_string(self.root().join("runc-args")).ok().map(|t| t.lines().map(str::to_owned).collect())
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn create_edits_the_bundle_and_runs_the_runtime_with_the_same_arguments() {
    let node = Node::new(&["PATH=/bin", "GPUSLICE_SLICES=slice0"]);
    let bundle = node.bundle();
    let args = ["--root", "/run/r", "--log", "/dev/null", "create", "--bundle", bundle.to_str().unwrap(), "ctr1"];
    let out = node.run(&args);
    assert_eq!(out.status.code(), Some(7), "the runtime's exit status comes back: {}", stderr(&out));
    assert_eq!(node.runc_args().unwrap(), args, "every argument but --gpuslice-config reaches the runtime");
    let config = node.config();
    assert_eq!(config["process"]["env"], json!(["PATH=/bin", "GPUSLICE_SLICES=slice0", "GPUSLICE_SLICE=slice0"]));
    let paths: Vec<&str> =
        config["linux"]["devices"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/dev/nvidiactl", "/dev/nvidia0"], "the spec-wide node and the slice's");
    assert_eq!(config["hooks"]["createContainer"][0]["args"][1], "create-container");
    assert_eq!(config["hooks"]["poststop"].as_array().unwrap().len(), 1);
}

#[test]
fn other_commands_and_containers_that_ask_for_nothing_are_passed_through() {
    let node = Node::new(&["PATH=/bin", "GPUSLICE_SLICES=slice0"]);
    let before = node.config();
    let out = node.run(&["state", "ctr1"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(node.runc_args().unwrap(), ["state", "ctr1"]);
    assert_eq!(node.config(), before, "state does not read or change the bundle");

    let node = Node::new(&["PATH=/bin"]);
    let before = std::fs::read(node.bundle().join("config.json")).unwrap();
    let out = node.run(&["run", "-b", node.bundle().to_str().unwrap(), "ctr2"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(std::fs::read(node.bundle().join("config.json")).unwrap(), before, "nothing asked, nothing written");
}

#[test]
fn refusals_are_one_line_in_the_log_and_the_runtime_never_runs() {
    for (env, want) in [
        (
            "GPUSLICE_SLICES=slice9",
            "gpuslice-runtime: unknown slice slice9 (asked for in GPUSLICE_SLICES); this node has slice0, all",
        ),
        ("GPUSLICE_SLICES=slice0,", "gpuslice-runtime: GPUSLICE_SLICES=\"slice0,\": an empty name in the list"),
        (
            "DOCKER_RESOURCE_GPUSLICE=other.dev/x=slice0",
            "is a device of kind other.dev/x, not of this node's gpuslice.dev/vgpu",
        ),
    ] {
        let node = Node::new(&[env]);
        let log = node.root().join("log.json");
        let before = std::fs::read(node.bundle().join("config.json")).unwrap();
        let out = node.run(&[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "create",
            "--bundle",
            node.bundle().to_str().unwrap(),
            "ctr",
        ]);
        assert_eq!(out.status.code(), Some(1), "{env}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{env}: {err}");
        assert!(err.contains(want), "{env}: {err}");
        assert_eq!(node.runc_args(), None, "{env}: the runtime ran");
        assert_eq!(std::fs::read(node.bundle().join("config.json")).unwrap(), before, "{env}: the bundle changed");
        let entry: Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
        assert_eq!(entry["level"], "error");
        assert_eq!(entry["msg"].as_str().unwrap(), err.trim_end(), "{env}");
    }
}

#[test]
fn a_slice_whose_gpu_left_the_node_is_refused() {
    let node = Node::new(&["GPUSLICE_SLICES=slice0"]);
    std::fs::write(
        node.root().join("driver/proc/driver/nvidia/gpus/0000:01:00.0/information"),
        "GPU UUID: \t GPU-bbbb\n",
    )
    .unwrap();
    let out = node.run(&["create", "--bundle", node.bundle().to_str().unwrap(), "ctr"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(
            "gpuslice-runtime: slice0 refers to GPU-aaaa which is not present on this node (present: GPU-bbbb)"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(node.runc_args(), None);
}

#[test]
fn precreate_hook_edits_stdin_to_stdout() {
    let node = Node::new(&[]);
    let config =
        json!({"ociVersion": "1.0.2", "annotations": {"gpuslice.dev/slices": "slice0"}, "process": {"env": []}});
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpuslice-runtime"))
        .arg("precreate-hook")
        .arg(format!("--gpuslice-config={}", node.root().join("gpuslice.toml").display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(config.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let edited: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(edited["process"]["env"], json!(["GPUSLICE_SLICE=slice0"]));
    assert_eq!(edited["hooks"]["createContainer"].as_array().unwrap().len(), 1);
    assert_eq!(edited["annotations"], config["annotations"]);
}
