//! The real plugin binary against a test kubelet on a simulated node: registration,
//! `ListAndWatch` (health and spec changes), `Allocate`, `GetPreferredAllocation`, kubelet
//! restarts, bad requests, signals and a bad config.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::process::Command;

use common::{Kubelet, Node, eventually, skip_unless_root};
use gpuslice_device_plugin::api::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Empty, PreferredAllocationRequest,
};

const H: &str = "Healthy";
const U: &str = "Unhealthy";

/// Not a test: `generate` for [`Node::generate`], run in a child of this binary.
#[test]
fn generate_child() {
    common::generate_child();
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn registers_each_resource_and_lists_its_devices() {
    if skip_unless_root("registers_each_resource_and_lists_its_devices") {
        return;
    }
    let node = Node::new(2);
    node.config("[defaults]\nsplit_count = 2\n[[gpu]]\nindex = 1\nmode = \"none\"\n");
    node.generate();
    let kubelet = Kubelet::start(&node.plugin_dir());
    let plugin = node.start_plugin();

    let slices = kubelet.wait_registration("gpuslice.dev/vgpu", 1).await;
    assert_eq!(slices.version, "v1beta1");
    assert_eq!(slices.endpoint, "gpuslice-vgpu.sock");
    let options = slices.options.unwrap();
    assert!(options.get_preferred_allocation_available && !options.pre_start_required);
    let whole = kubelet.wait_registration("gpuslice.dev/gpu", 1).await;
    assert_eq!(whole.endpoint, "gpuslice-gpu.sock");
    assert!(node.plugin_dir().join("gpuslice-vgpu.sock").exists());

    let mut client = kubelet.dial("gpuslice-vgpu.sock").await;
    let got = client.get_device_plugin_options(Empty {}).await.unwrap().into_inner();
    assert!(got.get_preferred_allocation_available);
    kubelet.watch("gpuslice-vgpu.sock").await.expect(&[("slice0", H), ("slice1", H)]).await;
    kubelet.watch("gpuslice-gpu.sock").await.expect(&[("gpu1", H)]).await;
    let log = plugin.log();
    assert!(log.contains("devices: gpuslice.dev/gpu: gpu1; gpuslice.dev/vgpu: slice0 slice1"), "{log}");
    assert!(!log.contains("Healthy device="), "a device found Healthy at start is in the summary only: {log}");
}

#[tokio::test]
async fn health_follows_the_limits_region_and_gpu_and_recovers() {
    if skip_unless_root("health_follows_the_limits_region_and_gpu_and_recovers") {
        return;
    }
    let node = Node::new(2);
    node.config("[defaults]\nsplit_count = 2\n");
    node.generate();
    let kubelet = Kubelet::start(&node.plugin_dir());
    let plugin = node.start_plugin();
    kubelet.wait_registration("gpuslice.dev/vgpu", 1).await;
    let mut watch = kubelet.watch("gpuslice-vgpu.sock").await;
    let all_healthy = [("slice0", H), ("slice1", H), ("slice2", H), ("slice3", H)];
    watch.expect(&all_healthy).await;

    // A corrupt limits file: that slice alone is Unhealthy, and Healthy again once rewritten.
    let limits = node.limits_path("slice1");
    let good = std::fs::read_to_string(&limits).unwrap();
    std::fs::write(&limits, good.replace("format=2", "format=9")).unwrap();
    watch.expect(&[("slice0", H), ("slice1", U), ("slice2", H), ("slice3", H)]).await;
    std::fs::write(&limits, &good).unwrap();
    watch.expect(&all_healthy).await;

    // Damaged region contents stay Healthy: the hook repairs them at the next container start
    // (and a tenant can write its region). The list that shows slice1's limits broken, written
    // after the damage, still has slice2 Healthy.
    let region = gpuslice_core::region::region_path(&node.state_dir(), "slice2");
    let header = std::fs::read(&region).unwrap()[..64].to_vec();
    std::fs::OpenOptions::new().write(true).open(&region).unwrap().write_all(&[0xff; 64]).unwrap();
    std::fs::write(&limits, "format=9\n").unwrap();
    watch.expect(&[("slice0", H), ("slice1", U), ("slice2", H), ("slice3", H)]).await;
    std::fs::OpenOptions::new().write(true).open(&region).unwrap().write_all(&header).unwrap();
    std::fs::write(&limits, &good).unwrap();
    watch.expect(&all_healthy).await;
    assert!(plugin.log().contains("region damaged"), "{}", plugin.log());

    // A region that is not a device (the hook refuses it): Unhealthy until the device is back.
    let rdev = std::fs::metadata(&region).unwrap().rdev();
    std::fs::remove_file(&region).unwrap();
    std::fs::write(&region, vec![0u8; 4096]).unwrap();
    watch.expect(&[("slice0", H), ("slice1", H), ("slice2", U), ("slice3", H)]).await;
    std::fs::remove_file(&region).unwrap();
    let (major, minor) = (libc::major(rdev).to_string(), libc::minor(rdev).to_string());
    assert!(Command::new("mknod").arg(&region).args(["b", &major, &minor]).status().unwrap().success());
    watch.expect(&all_healthy).await;

    // GPU 1's device node vanishes: both of its slices are Unhealthy; it comes back.
    std::fs::remove_file(node.root().join("dev/nvidia1")).unwrap();
    watch.expect(&[("slice0", H), ("slice1", H), ("slice2", U), ("slice3", U)]).await;
    node.mknod("nvidia1", 195, 1);
    watch.expect(&all_healthy).await;
    let log = plugin.log();
    assert!(log.contains("Unhealthy") && log.contains("slice1"), "{log}");
}

#[tokio::test]
async fn follows_generate_adding_and_removing_devices_and_resources() {
    if skip_unless_root("follows_generate_adding_and_removing_devices_and_resources") {
        return;
    }
    let node = Node::new(2);
    let by_size = "resources = \"by-size\"";
    node.config_k8s(by_size, "[defaults]\nsplit_count = 2\n");
    node.generate();
    let kubelet = Kubelet::start(&node.plugin_dir());
    let _plugin = node.start_plugin();
    kubelet.wait_registration("gpuslice.dev/vgpu-40g", 1).await;
    let mut forty = kubelet.watch("gpuslice-vgpu-40g.sock").await;
    forty.expect(&[("slice0", H), ("slice1", H), ("slice2", H), ("slice3", H)]).await;

    // GPU 0 in four: a 20 GiB resource appears; the 40 GiB one keeps GPU 1's slices.
    node.config_k8s(by_size, "[defaults]\nsplit_count = 2\n[[gpu]]\nindex = 0\nsplit_count = 4\n");
    node.generate();
    kubelet.wait_registration("gpuslice.dev/vgpu-20g", 1).await;
    kubelet
        .watch("gpuslice-vgpu-20g.sock")
        .await
        .expect(&[("slice0", H), ("slice1", H), ("slice2", H), ("slice3", H)])
        .await;
    forty.expect(&[("slice4", H), ("slice5", H)]).await;

    // Both GPUs in four: no 40 GiB slice is left, so that resource stops and its socket goes.
    node.config_k8s(by_size, "[defaults]\nsplit_count = 4\n");
    node.generate();
    let sock = node.plugin_dir().join("gpuslice-vgpu-40g.sock");
    eventually("the 40 GiB resource's socket removed", || !sock.exists()).await;
    let _ = forty.stream.message().await; // the stream ends (or has ended)
    let mut twenty = kubelet.watch("gpuslice-vgpu-20g.sock").await;
    let eight: Vec<String> = (0..8).map(|i| format!("slice{i}")).collect();
    twenty.until("eight 20 GiB slices", |l| l.iter().map(|(id, _)| id).eq(eight.iter())).await;
}

#[tokio::test]
async fn allocate_answers_cdi_names_and_refuses_bad_requests() {
    if skip_unless_root("allocate_answers_cdi_names_and_refuses_bad_requests") {
        return;
    }
    let node = Node::new(2);
    node.config("[defaults]\nsplit_count = 2\n");
    node.generate();
    let kubelet = Kubelet::start(&node.plugin_dir());
    let plugin = node.start_plugin();
    kubelet.wait_registration("gpuslice.dev/vgpu", 1).await;
    let mut client = kubelet.dial("gpuslice-vgpu.sock").await;

    let request = |sets: &[&[&str]]| AllocateRequest {
        container_requests: sets.iter().map(|s| ContainerAllocateRequest { devices_ids: ids(s) }).collect(),
    };
    let answer = client.allocate(request(&[&["slice0", "slice2"], &["slice3"]])).await.unwrap().into_inner();
    assert_eq!(answer.container_responses.len(), 2);
    let first = &answer.container_responses[0];
    let names: Vec<&str> = first.cdi_devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["gpuslice.dev/vgpu=slice0", "gpuslice.dev/vgpu=slice2"]);
    // The annotations, read by the CDI library as a runtime without CRI CDI fields reads them.
    let annotations: HashMap<String, String> = first.annotations.clone().into_iter().collect();
    let (keys, mut devices) = container_device_interface::annotations::parse_annotations(&annotations).unwrap();
    devices.sort();
    assert_eq!(devices, ["gpuslice.dev/vgpu=slice0", "gpuslice.dev/vgpu=slice2"]);
    assert!(keys.iter().all(|k| k.starts_with("cdi.k8s.io/gpuslice_")), "{keys:?}");
    assert_eq!(answer.container_responses[1].cdi_devices[0].name, "gpuslice.dev/vgpu=slice3");

    // Unknown IDs: InvalidArgument naming the ID, and the plugin keeps serving.
    let err = client.allocate(request(&[&["slice0", "slice9"]])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("\"slice9\""), "{}", err.message());
    let err = client.allocate(request(&[&["../../etc"]])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Two slices of one GPU in one container: refused, as the container could use only one.
    let err = client.allocate(request(&[&["slice0", "slice1"]])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("same GPU"), "{}", err.message());
    let again = client.allocate(request(&[&["slice1"]])).await.unwrap().into_inner();
    assert_eq!(again.container_responses[0].cdi_devices[0].name, "gpuslice.dev/vgpu=slice1");
    // A new connection is served too.
    let mut other = kubelet.dial("gpuslice-vgpu.sock").await;
    other.get_device_plugin_options(Empty {}).await.unwrap();
    assert!(plugin.log().contains("Allocate refused"), "{}", plugin.log());
}

/// Preferred allocation of `size` from all free devices with `must`, under `policy`.
async fn preferred_with(policy: &str, size: i32, available: &[&str], must: &[&str]) -> Vec<String> {
    let node = Node::new(3);
    // GPU 0: slice0-3, GPU 1: slice4-5, GPU 2: slice6-8.
    node.config_k8s(
        &format!("allocation = \"{policy}\""),
        "[[gpu]]\nindex = 0\nsplit_count = 4\n[[gpu]]\nindex = 1\nsplit_count = 2\n[[gpu]]\nindex = 2\nsplit_count = 3\n",
    );
    node.generate();
    let kubelet = Kubelet::start(&node.plugin_dir());
    let _plugin = node.start_plugin();
    kubelet.wait_registration("gpuslice.dev/vgpu", 1).await;
    kubelet.watch("gpuslice-vgpu.sock").await.until("nine slices", |l| l.len() == 9).await;
    let mut client = kubelet.dial("gpuslice-vgpu.sock").await;
    let request = PreferredAllocationRequest {
        container_requests: vec![ContainerPreferredAllocationRequest {
            available_device_i_ds: ids(available),
            must_include_device_i_ds: ids(must),
            allocation_size: size,
        }],
    };
    let answer = client.get_preferred_allocation(request).await.unwrap().into_inner();
    answer.container_responses[0].device_i_ds.clone()
}

#[tokio::test]
async fn preferred_allocation_spreads_or_packs_with_must_include_first() {
    if skip_unless_root("preferred_allocation_spreads_or_packs_with_must_include_first") {
        return;
    }
    let all = ["slice0", "slice1", "slice2", "slice3", "slice4", "slice5", "slice6", "slice7", "slice8"];
    assert_eq!(preferred_with("spread", 2, &all, &[]).await, ["slice0", "slice6"]);
    assert_eq!(preferred_with("binpack", 2, &all, &[]).await, ["slice4", "slice6"]);
    assert_eq!(preferred_with("binpack", 2, &all, &["slice8"]).await, ["slice8", "slice4"]);
    // Only what is free counts: GPU 0 with one free slice is the fullest.
    let some = ["slice3", "slice4", "slice5", "slice7", "slice8"];
    assert_eq!(preferred_with("binpack", 1, &some, &[]).await, ["slice3"]);
    assert_eq!(preferred_with("spread", 1, &some, &[]).await, ["slice4"]);
}

#[tokio::test]
async fn registers_again_after_a_kubelet_restart() {
    if skip_unless_root("registers_again_after_a_kubelet_restart") {
        return;
    }
    let node = Node::new(1);
    node.config("[defaults]\nsplit_count = 2\n");
    node.generate();
    // The plugin starts first and waits for the kubelet, saying so once.
    let plugin = node.start_plugin();
    let waiting = |log: &str| log.matches("waiting for the kubelet").count();
    eventually("the plugin says it waits", || waiting(&plugin.log()) == 1).await;
    let kubelet = Kubelet::start(&node.plugin_dir());
    kubelet.wait_registration("gpuslice.dev/vgpu", 1).await;
    assert_eq!(waiting(&plugin.log()), 1, "{}", plugin.log());

    // A restart as the kubelet does it: every socket in the directory removed, a new kubelet.sock.
    kubelet.stop_and_clear().await;
    let kubelet = Kubelet::start(&node.plugin_dir());
    let again = kubelet.wait_registration("gpuslice.dev/vgpu", 1).await;
    assert_eq!(again.endpoint, "gpuslice-vgpu.sock");
    kubelet.watch("gpuslice-vgpu.sock").await.expect(&[("slice0", H), ("slice1", H)]).await;

    // Only kubelet.sock recreated (the plugin's socket left): noticed too.
    drop(kubelet);
    let kubelet = Kubelet::start(&node.plugin_dir());
    kubelet.wait_registration("gpuslice.dev/vgpu", 1).await;
    kubelet.watch("gpuslice-vgpu.sock").await.expect(&[("slice0", H), ("slice1", H)]).await;
}

#[tokio::test]
async fn sigterm_and_sigint_stop_it_with_its_sockets_removed() {
    if skip_unless_root("sigterm_and_sigint_stop_it_with_its_sockets_removed") {
        return;
    }
    let node = Node::new(1);
    node.config("[defaults]\nsplit_count = 2\n");
    node.generate();
    let kubelet = Kubelet::start(&node.plugin_dir());
    for (sig, n) in [(libc::SIGTERM, 1), (libc::SIGINT, 2)] {
        let mut plugin = node.start_plugin();
        kubelet.wait_registration("gpuslice.dev/vgpu", n).await;
        let mut watch = kubelet.watch("gpuslice-vgpu.sock").await;
        watch.expect(&[("slice0", H), ("slice1", H)]).await;
        plugin.signal(sig);
        let status = plugin.wait().await;
        assert_eq!(status.code(), Some(0), "signal {sig}: {status}; log:\n{}", plugin.log());
        assert!(!node.plugin_dir().join("gpuslice-vgpu.sock").exists());
        assert!(node.plugin_dir().join("kubelet.sock").exists(), "the kubelet's socket is not the plugin's to remove");
        // The kubelet's stream ended rather than hang.
        assert!(matches!(watch.stream.message().await, Ok(None) | Err(_)));
    }
}

#[tokio::test]
async fn a_refused_registration_is_one_line_and_a_failure() {
    if skip_unless_root("a_refused_registration_is_one_line_and_a_failure") {
        return;
    }
    let node = Node::new(1);
    node.config("");
    node.generate();
    let kubelet = Kubelet::start_refusing(&node.plugin_dir(), Some("unsupported API version"));
    let mut plugin = node.start_plugin();
    let status = plugin.wait().await;
    assert!(!status.success(), "{status}");
    let log = plugin.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("refused to register gpuslice.dev/vgpu") && errors[0].contains("unsupported API version"),
        "{log}"
    );
    assert_eq!(kubelet.requests().len(), 1);
}

#[test]
fn a_bad_config_is_one_line_and_a_failure() {
    let node_dir = tempfile::tempdir().unwrap();
    let config = node_dir.path().join("config.toml");
    for (text, want) in [
        ("[kubernetes]\nresource = \"vgpu\"\n", "kubernetes.resource = \"vgpu\": must be domain/name"),
        ("[kubernetes]\nallocation = \"random\"\n", "kubernetes.allocation"),
        ("[kubernetes]\nsockets = 1\n", "unknown field `sockets`"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpuslice-device-plugin"))
            .arg("--config")
            .arg(&config)
            .arg("--device-plugin-dir")
            .arg(node_dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(want) && err.contains("config.toml"), "{err:?} should say {want:?}");
    }
}

#[tokio::test]
async fn a_kubelet_sock_nobody_listens_on_is_waited_for_quietly() {
    if skip_unless_root("a_kubelet_sock_nobody_listens_on_is_waited_for_quietly") {
        return;
    }
    let node = Node::new(1);
    node.config("[defaults]\nsplit_count = 2\n");
    node.generate();
    // What a kubelet that died leaves: its socket file, with nobody listening.
    drop(std::os::unix::net::UnixListener::bind(node.plugin_dir().join("kubelet.sock")).unwrap());
    let plugin = node.start_plugin();
    let unreachable = |log: &str| log.matches("cannot be reached").count();
    eventually("the plugin says the kubelet cannot be reached", || unreachable(&plugin.log()) >= 1).await;
    // Several tries later (the backoff starts at 50 ms), still one line.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(unreachable(&plugin.log()), 1, "{}", plugin.log());
    assert!(plugin.child.is_some());
    let kubelet = Kubelet::start(&node.plugin_dir());
    kubelet.wait_registration("gpuslice.dev/vgpu", 1).await;
    kubelet.watch("gpuslice-vgpu.sock").await.expect(&[("slice0", H), ("slice1", H)]).await;
}

#[tokio::test]
async fn without_nvml_every_device_is_unhealthy() {
    if skip_unless_root("without_nvml_every_device_is_unhealthy") {
        return;
    }
    let node = Node::new(1);
    node.config("[defaults]\nsplit_count = 2\n");
    node.generate();
    // The driver unloaded after generate: NVML's init fails from now on.
    let fake = node.root().join("fakegpu.toml");
    let text = std::fs::read_to_string(&fake).unwrap();
    std::fs::write(&fake, format!("init_error = \"DRIVER_NOT_LOADED\"\n{text}")).unwrap();
    let kubelet = Kubelet::start(&node.plugin_dir());
    let plugin = node.start_plugin();
    kubelet.wait_registration("gpuslice.dev/vgpu", 1).await;
    kubelet.watch("gpuslice-vgpu.sock").await.expect(&[("slice0", U), ("slice1", U)]).await;
    // Several scans later (one each 100 ms), still one line.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let log = plugin.log();
    assert_eq!(log.matches("NVML unavailable").count(), 1, "said once, not once per scan: {log}");
    assert!(log.contains("DRIVER_NOT_LOADED") || log.contains("could not initialise"), "{log}");
}

#[tokio::test]
async fn a_slice_of_unknown_size_is_left_out_with_one_line_until_readable() {
    if skip_unless_root("a_slice_of_unknown_size_is_left_out_with_one_line_until_readable") {
        return;
    }
    let node = Node::new(1);
    node.config_k8s("resources = \"by-size\"", "[defaults]\nsplit_count = 2\n");
    node.generate();
    // slice1's limits unreadable before the plugin ever saw them: its size, so its resource, is unknown.
    let limits = node.limits_path("slice1");
    let good = std::fs::read_to_string(&limits).unwrap();
    std::fs::write(&limits, "garbage\n").unwrap();
    let kubelet = Kubelet::start(&node.plugin_dir());
    let plugin = node.start_plugin();
    kubelet.wait_registration("gpuslice.dev/vgpu-40g", 1).await;
    let mut watch = kubelet.watch("gpuslice-vgpu-40g.sock").await;
    watch.expect(&[("slice0", H)]).await;
    // Several scans later (one each 100 ms), still one line.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let log = plugin.log();
    assert_eq!(log.matches("not advertised until its limits can be read").count(), 1, "{log}");
    std::fs::write(&limits, good).unwrap();
    watch.expect(&[("slice0", H), ("slice1", H)]).await;
}
