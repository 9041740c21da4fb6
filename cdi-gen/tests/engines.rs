//! `generate` warns, one line per installed engine, when a config choice makes the spec
//! unreadable by that engine; engines are not even asked when the spec is the 0.5.0 default.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// A `podman` in `bin` that prints `version` and records that it ran in `bin/ran`.
fn fake_podman(bin: &Path, version: &str) {
    std::fs::create_dir_all(bin).unwrap();
    let script = bin.join("podman");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho ran >> '{}/ran'\necho 'podman version {version}'\n", bin.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn generate_with_path(node: &Node, path: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"));
    node.env(&mut cmd).env("PATH", path);
    cmd.arg("generate").arg("--config").arg(node.config_path()).arg("--nvml-lib").arg(fake_nvml());
    cmd.arg("--dev-root").arg(node.dev_root());
    cmd.output().unwrap()
}

#[test]
fn annotations_warn_about_podman_4_3() {
    if skip_unless_root("annotations_warn_about_podman_4_3") {
        return;
    }
    let node = Node::new(1, true);
    let bin = node.root().join("bin");
    fake_podman(&bin, "4.3.1");
    node.config("annotations = true\n");
    let out = ok(generate_with_path(&node, &bin));
    let warnings: Vec<String> = stderr(&out).lines().filter(|l| l.contains("warning")).map(str::to_owned).collect();
    assert_eq!(
        warnings,
        [
            "gpuslice-cdi: warning: podman 4.3.1 reads CDI specs up to 0.5.0, and this spec is 0.6.0 (for annotations or a `.` in the class): podman cannot use it; set `annotations = false` for a 0.5.0 spec"
        ],
        "{}",
        stderr(&out)
    );
    assert!(node.spec_path().exists(), "the spec is written all the same");

    fake_podman(&bin, "4.9.3");
    let out = ok(generate_with_path(&node, &bin));
    assert!(!stderr(&out).contains("warning"), "podman 4.9 reads 0.6.0: {}", stderr(&out));
}

#[test]
fn the_default_spec_asks_no_engine() {
    if skip_unless_root("the_default_spec_asks_no_engine") {
        return;
    }
    let node = Node::new(1, true);
    let bin = node.root().join("bin");
    fake_podman(&bin, "4.3.1");
    node.config("");
    let out = ok(generate_with_path(&node, &bin));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(!bin.join("ran").exists(), "a 0.5.0 spec needs no engine's version");
}
