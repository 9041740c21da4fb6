//! `gpuslice-cdi generate` for a GPU in mode `mig` on the simulated GPU: one device per MIG
//! device, with its parent's node, its capability nodes and `CUDA_VISIBLE_DEVICES`, beside a
//! GPU in mode shim in the same spec.

mod common;

use common::*;
use gpuslice_core::cdi::Spec;
use gpuslice_core::config::Mode;
use gpuslice_core::limits::{Limits, limits_path};
use gpuslice_core::mig::MigInstance;

const MIG_UUID: &str = "MIG-aaaaaaaa-1111-2222-3333-444444444444";

/// Two GPUs; GPU 0 in MIG mode with a 3g.40gb at GPU instance 1; its capability nodes and the
/// driver's mig-minors under `<root>/driver` unless `minors` is false.
fn mig_node(caps_nodes: bool, minors: bool) -> Node {
    let node = Node::new(2, true);
    let fake = std::fs::read_to_string(node.root().join("fakegpu.toml")).unwrap();
    let second = fake.rfind("[[gpu]]").unwrap();
    let fake = format!(
        "{}mig_mode = true\n[[gpu.mig]]\nuuid = \"{MIG_UUID}\"\nprofile = \"3g.40gb\"\nmemory = \"40GiB\"\nsm_count = 60\ngpu_instance_id = 1\n{}",
        &fake[..second],
        &fake[second..]
    );
    std::fs::write(node.root().join("fakegpu.toml"), fake).unwrap();
    if caps_nodes {
        std::fs::create_dir_all(node.root().join("dev/nvidia-caps")).unwrap();
        node.mknod("nvidia-caps/nvidia-cap12", 511, 12);
        node.mknod("nvidia-caps/nvidia-cap13", 511, 13);
    }
    let caps = node.root().join("driver/proc/driver/nvidia-caps");
    std::fs::create_dir_all(&caps).unwrap();
    if minors {
        std::fs::write(caps.join("mig-minors"), gpuslice_core::mig::driver_mig_minors(2)).unwrap();
    }
    node.config(&format!(
        "driver_root = \"{}\"\n[[gpu]]\nindex = 0\nmode = \"mig\"\n",
        node.root().join("driver").display()
    ));
    node
}

#[test]
fn a_mig_device_gets_its_nodes_and_its_uuid_and_no_state_devices() {
    if skip_unless_root("a_mig_device_gets_its_nodes_and_its_uuid_and_no_state_devices") {
        return;
    }
    let node = mig_node(true, true);
    ok(node.cdi(&["generate"]));
    reference_load(&node.spec_path()).unwrap();
    let spec: Spec = serde_yaml::from_str(&std::fs::read_to_string(node.spec_path()).unwrap()).unwrap();
    let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["mig0-1", "slice0", "all"]);
    let mig = &spec.devices[0].container_edits;
    let nodes: Vec<(&str, Option<i64>, Option<i64>)> =
        mig.device_nodes.iter().map(|n| (n.path.as_str(), n.major, n.minor)).collect();
    assert_eq!(
        nodes,
        [
            ("/dev/nvidia0", Some(195), Some(0)),
            ("/dev/nvidia-caps/nvidia-cap12", Some(511), Some(12)),
            ("/dev/nvidia-caps/nvidia-cap13", Some(511), Some(13)),
        ],
        "the parent's node and the GPU and compute instance capabilities; no region or board"
    );
    assert_eq!(mig.env, ["GPUSLICE_SLICE=mig0-1".to_owned(), format!("CUDA_VISIBLE_DEVICES={MIG_UUID}")]);
    assert!(mig.hooks[0].args.iter().any(|a| a == "--mode=mig"));
    assert!(mig.hooks[0].args.contains(&format!("--memory-bytes={}", 40 * GIB)));
    let all = &spec.devices[2].container_edits;
    assert!(
        !all.env.iter().any(|e| e.starts_with("CUDA_VISIBLE_DEVICES=")),
        "`all` selects no MIG device: {:?}",
        all.env
    );

    let limits = Limits::load(&limits_path(&node.state_dir(), "mig0-1")).unwrap();
    assert_eq!((limits.mode, limits.memory_bytes, limits.cores_percent), (Mode::Mig, 40 * GIB, 45));
    assert_eq!(limits.gpu_uuid, uuid(0), "the parent GPU, which the hook checks is present");
    let record = MigInstance::load(&node.state_dir(), "mig0-1").unwrap();
    assert_eq!((record.uuid.as_str(), record.sm_count, record.profile.as_str()), (MIG_UUID, 60, "3g.40gb"));
    assert!(!gpuslice_core::region::region_path(&node.state_dir(), "mig0-1").exists());

    // list and status show the instance.
    let list = stdout(&ok(node.cdi(&["list"])));
    assert!(list.lines().any(|l| l.starts_with("mig0-1") && l.ends_with("mig") && l.contains("40.00")), "{list}");
    let mut status = std::process::Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"));
    status.args(["status", "--json", "--state-dir"]).arg(node.state_dir());
    let status = stdout(&ok(node.env(&mut status).output().unwrap()));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let mig = status.as_array().unwrap().iter().find(|s| s["slice"] == "mig0-1").unwrap();
    assert_eq!(mig["mode"], "mig");
    assert_eq!(mig["mig"]["uuid"], MIG_UUID);
    assert_eq!(mig["mig"]["sm_count"], 60);
    assert_eq!(mig["memory_limit_bytes"], 40 * GIB);
    assert_eq!(mig["error"], serde_json::Value::Null);
}

#[test]
fn missing_capability_nodes_or_minors_are_one_line_and_write_nothing() {
    if skip_unless_root("missing_capability_nodes_or_minors_are_one_line_and_write_nothing") {
        return;
    }
    let node = mig_node(false, true);
    let e = fails_with(&node.cdi(&["generate"]), &["nvidia-cap12", "MIG device", "nvidia-modprobe"]);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(!node.spec_path().exists());

    let node = mig_node(true, false);
    let e = fails_with(&node.cdi(&["generate"]), &["mig-minors", "MIG support"]);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(!node.spec_path().exists());
}
