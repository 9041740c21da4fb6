//! `gpuslice-cdi mig apply` on the simulated GPU: each `[[gpu]] mig_layout` becomes the GPU's
//! MIG instances, which a following `generate` (another process) publishes; refusals with MIG
//! mode off, an unknown profile or a process on an instance change nothing.

mod common;

use common::*;
use gpuslice_core::cdi::Spec;

/// Two simulated H100s; GPU 0 in MIG mode (with `mig` as its `[[gpu.mig]]` tables), GPU 1
/// without MIG support; the driver's mig-minors under `<root>/driver`.
fn node(mig: &str) -> Node {
    let node = Node::new(2, true);
    let fake = std::fs::read_to_string(node.root().join("fakegpu.toml")).unwrap();
    let second = fake.rfind("[[gpu]]").unwrap();
    let fake = format!("{}mig_mode = true\n{mig}{}", &fake[..second], &fake[second..]);
    std::fs::write(node.root().join("fakegpu.toml"), fake).unwrap();
    let caps = node.root().join("driver/proc/driver/nvidia-caps");
    std::fs::create_dir_all(&caps).unwrap();
    std::fs::write(caps.join("mig-minors"), gpuslice_core::mig::driver_mig_minors(2)).unwrap();
    node
}

fn layout(node: &Node, gpu: u32, profiles: &[&str]) {
    let list: Vec<String> = profiles.iter().map(|p| format!("{p:?}")).collect();
    node.config(&format!(
        "driver_root = \"{}\"\n[[gpu]]\nindex = {gpu}\nmode = \"mig\"\nmig_layout = [{}]\n",
        node.root().join("driver").display(),
        list.join(", ")
    ));
}

fn geometry(node: &Node) -> Option<String> {
    std::fs::read_to_string(node.root().join("fakegpu-state/gpu0.mig-geometry")).ok()
}

/// The capability nodes of every GPU instance ID of GPU 0 (minors as the driver numbers them).
fn caps_nodes(node: &Node) {
    std::fs::create_dir_all(node.root().join("dev/nvidia-caps")).unwrap();
    for gi in 0..15 {
        for minor in [3 + 9 * gi, 4 + 9 * gi] {
            node.mknod(&format!("nvidia-caps/nvidia-cap{minor}"), 511, minor);
        }
    }
}

fn spec_devices(node: &Node) -> Vec<(String, String)> {
    let spec: Spec = serde_yaml::from_str(&std::fs::read_to_string(node.spec_path()).unwrap()).unwrap();
    spec.devices
        .iter()
        .map(|d| {
            let env = d.container_edits.env.iter().find(|e| e.starts_with("CUDA_VISIBLE_DEVICES="));
            (d.name.clone(), env.cloned().unwrap_or_default())
        })
        .collect()
}

#[test]
fn apply_then_generate_publishes_the_layout_and_a_second_apply_does_nothing() {
    if skip_unless_root("apply_then_generate_publishes_the_layout_and_a_second_apply_does_nothing") {
        return;
    }
    let node = node("");
    caps_nodes(&node);
    layout(&node, 0, &["1g.10gb", "3g.40gb", "2g.20gb", "1g.10gb"]);
    let out = stdout(&ok(node.cdi(&["mig", "apply", "--dry-run"])));
    assert!(out.contains("GPU 0: would create [1g.10gb, 3g.40gb, 2g.20gb, 1g.10gb]"), "{out}");
    assert_eq!(geometry(&node), None, "a dry run changes nothing");

    let out = stdout(&ok(node.cdi(&["mig", "apply"])));
    assert!(out.contains("GPU 0: creating") && out.contains("run gpuslice-cdi generate"), "{out}");
    ok(node.cdi(&["generate"]));
    reference_load(&node.spec_path()).unwrap();
    let devices = spec_devices(&node);
    let names: Vec<&str> = devices.iter().map(|d| d.0.as_str()).collect();
    // A 3g.40gb fits with a 2g.20gb and two 1g.10gb only at memory slices 4–7: GPU instance 2;
    // the 2g.20gb at 0 is 3, the 1g.10gb at 2 and 3 are 9 and 10.
    assert_eq!(names, ["mig0-2", "mig0-3", "mig0-9", "mig0-10", "slice0", "all"]);
    assert!(devices[..4].iter().all(|d| d.1.starts_with("CUDA_VISIBLE_DEVICES=MIG-")), "{devices:?}");
    let list = stdout(&ok(node.cdi(&["list"])));
    assert!(list.contains("39.25") && list.contains("19.50") && list.contains("9.62"), "{list}");

    let before = geometry(&node);
    let out = stdout(&ok(node.cdi(&["mig", "apply"])));
    assert!(out.contains("GPU 0: already has the layout") && !out.contains("generate"), "{out}");
    assert_eq!(geometry(&node), before, "an applied layout is left as it is");

    layout(&node, 0, &["7g.80gb"]);
    let out = stdout(&ok(node.cdi(&["mig", "apply"])));
    assert!(
        out.contains("destroying its 4 GPU instances") && out.contains("created 7g.80gb as GPU instance 0"),
        "{out}"
    );
    ok(node.cdi(&["generate"]));
    let names: Vec<String> = spec_devices(&node).into_iter().map(|d| d.0).collect();
    assert_eq!(names, ["mig0-0", "slice0", "all"]);
}

#[test]
fn mig_mode_off_is_refused_and_never_toggled() {
    let node = node("");
    layout(&node, 1, &["1g.10gb"]);
    let e = fails_with(&node.cdi(&["mig", "apply"]), &["gpu[0].mig_layout", "GPU 1", "MIG mode off", "never toggles"]);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

#[test]
fn an_unknown_profile_lists_the_gpus_and_a_layout_that_does_not_fit_is_refused() {
    let node = node("");
    layout(&node, 0, &["3g.40gb", "5g.50gb"]);
    let e = fails_with(
        &node.cdi(&["mig", "apply"]),
        &["gpu[0].mig_layout[1] = \"5g.50gb\"", "1g.10gb", "7g.80gb", "1g.20gb"],
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    layout(&node, 0, &["3g.40gb", "3g.40gb", "1g.10gb"]);
    fails_with(&node.cdi(&["mig", "apply"]), &["gpu[0].mig_layout", "do not fit together"]);
    assert_eq!(geometry(&node), None);
}

#[test]
fn a_process_on_an_instance_refuses_the_change() {
    let node = node(
        "[[gpu.mig]]\nuuid = \"MIG-aaaaaaaa-1111-2222-3333-444444444444\"\nprofile = \"3g.40gb\"\nmemory = \"40GiB\"\nsm_count = 60\ngpu_instance_id = 1\n",
    );
    layout(&node, 0, &["7g.80gb"]);
    let config = fakegpu::config::FakeGpuConfig::load(&node.root().join("fakegpu.toml")).unwrap();
    let sim =
        fakegpu::state::Simulator::new(node.root().join("fakegpu.toml"), config, node.root().join("fakegpu-state"))
            .unwrap();
    sim.migs(0)[0].try_reserve(1 << 20).unwrap();
    let e =
        fails_with(&node.cdi(&["mig", "apply"]), &["GPU instance 1 has processes", &std::process::id().to_string()]);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert_eq!(geometry(&node), None, "nothing was destroyed");

    sim.migs(0)[0].release(1 << 20);
    let out = stdout(&ok(node.cdi(&["mig", "apply"])));
    assert!(out.contains("destroying its 1 GPU instances (3g.40gb)") && out.contains("created 7g.80gb"), "{out}");
}
