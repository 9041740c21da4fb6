//! Every failure of `gpuslice-cdi generate`: one clear line, non-zero exit, nothing written.

mod common;

use common::*;

/// Runs generate expecting failure; checks the message and that nothing was written.
fn refused(node: &Node, wants: &[&str]) {
    let out = node.cdi(&["generate"]);
    fails_with(&out, wants);
    assert!(node.written().is_empty(), "something was written: {:?}", node.written());
}

#[test]
fn bad_config_values_are_named_and_nothing_is_written() {
    let node = Node::new(2, false);
    let cases: &[(&str, &[&str])] = &[
        ("[defaults]\nsplit_count = 0", &["config.toml", "defaults.split_count = 0"]),
        ("[defaults]\nmemory_scaling = -1", &["defaults.memory_scaling = -1"]),
        ("[defaults]\ncore_scaling = \"fast\"", &["defaults.core_scaling", "\"fast\""]),
        ("[defaults]\nsplitcount = 2", &["unknown field `splitcount`"]),
        ("[[gpu]]\nindex = 0\nslices = [{ memory = \"8GiB\", cores = 120 }]", &["gpu[0].slices[0].cores = 120"]),
        (
            "[[gpu]]\nindex = 0\nslices = [{ name = \"x\", memory = 1, cores = 1 }, { name = \"x\", memory = 1, cores = 1 }]",
            &["gpu[0].slices[1].name = \"x\""],
        ),
        (
            "[[gpu]]\nindex = 0\nslices = [{ memory = \"60GiB\", cores = 50 }, { memory = \"60GiB\", cores = 50 }]",
            &["gpu[0].slices", "120.00 GiB"],
        ),
        ("[[gpu]]\nuuid = \"GPU-deadbeef\"\nsplit_count = 2", &["gpu[0].uuid = \"GPU-deadbeef\"", "matches no GPU"]),
        ("[[gpu]]\nindex = 5\nsplit_count = 2", &["gpu[0].index = 5", "matches no GPU"]),
    ];
    for (body, wants) in cases {
        node.config(body);
        refused(&node, wants);
    }
}

#[test]
fn missing_config_file_is_an_error_unless_it_is_the_default_path() {
    let node = Node::new(1, false);
    let out = node.cdi(&["list"]);
    fails_with(&out, &["config.toml", "No such file"]);
}

#[test]
fn nvml_that_cannot_load_is_one_clear_error() {
    let node = Node::new(1, false);
    node.config("");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"));
    node.env(&mut cmd).args(["generate", "--config", node.config_path().to_str().unwrap()]);
    cmd.args(["--nvml-lib", "/nonexistent/libnvidia-ml.so.1", "--dev-root", node.root().to_str().unwrap()]);
    let out = cmd.output().unwrap();
    fails_with(&out, &["cannot load NVML from /nonexistent/libnvidia-ml.so.1", "driver"]);
    assert!(node.written().is_empty());
}

#[test]
fn nvml_that_cannot_initialise_is_one_clear_error() {
    let node = Node::new(1, false);
    node.config("");
    node.fail_nvml_init("DRIVER_NOT_LOADED");
    refused(&node, &["could not initialise", "driver is not loaded"]);
}

#[test]
fn a_gpu_without_its_device_node_is_refused() {
    if skip_unless_root("a_gpu_without_its_device_node_is_refused") {
        return;
    }
    let node = Node::new(2, false);
    node.mknod("nvidia0", 195, 0);
    node.config("");
    refused(&node, &["GPU 1", &uuid(1), "/dev/nvidia1"]);
}

#[test]
fn a_device_node_that_is_not_a_char_device_is_refused() {
    let node = Node::new(1, false);
    std::fs::write(node.root().join("dev/nvidia0"), "").unwrap();
    node.config("");
    refused(&node, &["dev/nvidia0 is not a character device"]);
}

#[test]
fn a_node_without_gpus_publishes_nothing() {
    let node = Node::new(0, false);
    node.config("");
    refused(&node, &["no GPU"]);
}

#[test]
fn unwritable_spec_dir_fails_cleanly() {
    if skip_unless_root("unwritable_spec_dir_fails_cleanly") {
        return;
    }
    let node = Node::new(1, true);
    // A regular file where the spec dir should be.
    std::fs::write(node.spec_dir(), "").unwrap();
    node.config("");
    let out = node.cdi(&["generate"]);
    fails_with(&out, &["creating", "cdi"]);
    assert!(!node.state_dir().exists(), "no limits written when the spec cannot be");
}
