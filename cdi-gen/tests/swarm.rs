//! `setup docker --swarm` advertises the spec's slices as Swarm generic resources, and
//! `generate` keeps them in step when the slices change (and touches no other daemon.json).

mod common;

use std::process::Command;

use common::*;

fn resources(daemon: &std::path::Path) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(daemon).unwrap()).unwrap();
    v["node-generic-resources"].clone()
}

#[test]
fn swarm_resources_follow_the_slices() {
    if skip_unless_root("swarm_resources_follow_the_slices") {
        return;
    }
    let node = Node::new(1, true);
    let daemon = node.root().join("daemon.json");
    let docker_config = ["--docker-config", daemon.to_str().unwrap()];
    node.config("[defaults]\nsplit_count = 2\n");
    ok(node.cdi(&["generate", docker_config[0], docker_config[1]]));
    assert!(!daemon.exists(), "generate creates no daemon.json");

    let out = ok(Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"))
        .args(["setup", "docker", "--swarm", "--file", daemon.to_str().unwrap(), "--config"])
        .arg(node.config_path())
        .output()
        .unwrap());
    assert!(stdout(&out).contains("made the default and the slices advertised to Swarm"), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&daemon).unwrap()).unwrap();
    assert_eq!(v["default-runtime"], "gpuslice");
    assert_eq!(v["runtimes"]["gpuslice"]["path"], "/usr/bin/gpuslice-runtime");
    assert_eq!(resources(&daemon), serde_json::json!(["gpuslice=slice0", "gpuslice=slice1"]));

    node.config("[defaults]\nsplit_count = 3\n");
    let out = ok(node.cdi(&["generate", docker_config[0], docker_config[1]]));
    assert!(
        stderr(&out).contains(
            "Swarm's gpuslice resources are now gpuslice=slice0 gpuslice=slice1 gpuslice=slice2; restart dockerd"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(resources(&daemon), serde_json::json!(["gpuslice=slice0", "gpuslice=slice1", "gpuslice=slice2"]));
    let out = ok(node.cdi(&["generate", docker_config[0], docker_config[1]]));
    assert!(!stderr(&out).contains("Swarm"), "nothing changed, nothing said: {}", stderr(&out));

    // A daemon.json that Swarm was not set up in is left as it is.
    let plain = "{\"features\": {\"cdi\": true}}\n";
    std::fs::write(&daemon, plain).unwrap();
    ok(node.cdi(&["generate", docker_config[0], docker_config[1]]));
    assert_eq!(std::fs::read_to_string(&daemon).unwrap(), plain);
}

#[test]
fn swarm_needs_a_spec_and_docker() {
    let node = Node::new(0, false);
    node.config("");
    let daemon = node.root().join("daemon.json");
    let out = Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"))
        .args(["setup", "docker", "--swarm", "--file", daemon.to_str().unwrap(), "--config"])
        .arg(node.config_path())
        .output()
        .unwrap();
    fails_with(&out, &["run gpuslice-cdi generate first"]);
    let out = Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"))
        .args(["setup", "containerd", "--runtime", "--dry-run", "--file", daemon.to_str().unwrap(), "--config"])
        .arg(node.config_path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("BinaryName = \"/usr/bin/gpuslice-runtime\""), "{out:?}");
    assert!(!daemon.exists(), "--dry-run writes nothing");
}
