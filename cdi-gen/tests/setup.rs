//! `gpuslice-cdi setup`: the real binary on config files in a temp dir: the edit, the backup,
//! `--dry-run` writing nothing, and a second run changing nothing.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn setup(dir: &Path, args: &[&str]) -> Output {
    // A config naming its own spec_dir, so nothing outside the temp dir is read.
    let config = dir.join("gpuslice.toml");
    fs::write(&config, "spec_dir = \"/run/gpuslice-test-cdi\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"))
        .arg("setup")
        .args(args)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "setup {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn backups(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bak"))
        .collect();
    names.sort();
    names
}

#[test]
fn docker_setup_backs_up_edits_once_and_dry_run_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("daemon.json");
    let original = "{\n  \"log-driver\": \"journald\"\n}\n";
    fs::write(&file, original).unwrap();
    let f = file.to_str().unwrap();

    let out = setup(tmp.path(), &["docker", "--file", f, "--dry-run"]);
    assert!(stdout(&out).contains("would change"), "{}", stdout(&out));
    assert!(stdout(&out).contains("+ ") && stdout(&out).contains("\"cdi\": true"), "{}", stdout(&out));
    assert_eq!(fs::read_to_string(&file).unwrap(), original);
    assert!(backups(tmp.path()).is_empty());

    let out = setup(tmp.path(), &["docker", "--file", f]);
    assert!(stdout(&out).contains("CDI turned on"), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(v["features"]["cdi"], true);
    assert_eq!(v["log-driver"], "journald");
    let saved = backups(tmp.path());
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(fs::read_to_string(tmp.path().join(&saved[0])).unwrap(), original);

    let out = setup(tmp.path(), &["docker", "--file", f]);
    assert!(stdout(&out).contains("already on"), "{}", stdout(&out));
    assert_eq!(backups(tmp.path()).len(), 1);
}

#[test]
fn containerd_setup_creates_a_missing_file_with_our_spec_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("containerd").join("config.toml");
    let f = file.to_str().unwrap();
    let out = setup(tmp.path(), &["containerd", "--file", f]);
    assert!(stdout(&out).contains("there was no file before"), "{}", stdout(&out));
    let doc: toml::Table = toml::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
    assert_eq!(cri["enable_cdi"].as_bool(), Some(true));
    let dirs: Vec<&str> = cri["cdi_spec_dirs"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(dirs, ["/etc/cdi", "/var/run/cdi", "/run/gpuslice-test-cdi"]);
    let before = fs::read_to_string(&file).unwrap();
    assert!(stdout(&setup(tmp.path(), &["containerd", "--file", f])).contains("already on"));
    assert_eq!(fs::read_to_string(&file).unwrap(), before);
    assert!(backups(file.parent().unwrap()).is_empty());
}

#[test]
fn podman_setup_says_nothing_is_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = setup(tmp.path(), &["podman"]);
    assert!(stdout(&out).contains("podman: nothing to do"), "{}", stdout(&out));
}
