//! `gpuslice-cdi generate` on the simulated GPU, checked with the reference CDI library.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use gpuslice_core::cdi::Spec;
use gpuslice_core::limits::{Limits, limits_path};

fn load(path: &std::path::Path) -> Spec {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn device<'a>(spec: &'a Spec, name: &str) -> &'a gpuslice_core::cdi::Device {
    spec.devices.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("no device {name}"))
}

#[test]
fn one_gpu_defaults_give_one_slice_and_all() {
    if skip_unless_root("one_gpu_defaults_give_one_slice_and_all") {
        return;
    }
    let node = Node::new(1, true);
    node.config("");
    ok(node.cdi(&["generate"]));
    let path = node.spec_path();
    reference_load(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    let spec = load(&path);
    assert_eq!(spec.kind, "gpuslice.dev/vgpu");
    assert_eq!(spec.cdi_version, "0.5.0", "the default spec is the lowest version every CDI engine reads");
    assert!(
        spec.annotations.is_empty() && spec.devices.iter().all(|d| d.annotations.is_empty()),
        "annotations are opt-in"
    );
    let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["slice0", "all"]);
    let slice0 = device(&spec, "slice0");
    assert_eq!(slice0.container_edits.env, ["GPUSLICE_SLICE=slice0"]);
    let dn = &slice0.container_edits.device_nodes[0];
    assert_eq!(
        (dn.path.as_str(), dn.kind.as_deref(), dn.major, dn.minor),
        ("/dev/nvidia0", Some("c"), Some(195), Some(0))
    );
    assert_eq!(dn.host_path.as_deref(), Some(node.root().join("dev/nvidia0").to_str().unwrap()));
    let shared: Vec<&str> = spec.container_edits.device_nodes.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(shared, ["/dev/nvidiactl", "/dev/nvidia-uvm"], "only the control nodes that exist");
    let hooks = &slice0.container_edits.hooks;
    assert_eq!(hooks.iter().map(|h| h.hook_name.as_str()).collect::<Vec<_>>(), ["createContainer", "poststop"]);
    for h in hooks {
        assert_eq!(h.path, "/usr/bin/gpuslice-hook");
        assert_eq!(h.env, ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "hooks carry an explicit env");
        assert_eq!(h.args[2..4], ["--slice", "slice0"]);
        assert!(h.args.contains(&format!("--memory-bytes={}", 80 * GIB)));
        assert!(h.args.iter().any(|a| a == "--cores-policy=cap") && h.args.iter().any(|a| a == "--priority=normal"));
        assert!(h.args.contains(&format!("--state-dir={}", node.state_dir().display())));
    }
    assert_eq!(hooks[0].args[..2], ["gpuslice-hook", "create-container"]);
    assert_eq!(hooks[1].args[..2], ["gpuslice-hook", "poststop"]);

    let limits = Limits::load(&limits_path(&node.state_dir(), "slice0")).unwrap();
    assert_eq!((limits.memory_bytes, limits.cores_percent, limits.generation), (80 * GIB, 100, 1));
    assert_eq!((limits.cores_policy.as_str(), limits.priority.as_str()), ("cap", "normal"));
    let region = gpuslice_core::region::region_path(&node.state_dir(), "slice0");
    assert_eq!(
        gpuslice_core::region::Region::open(&region).unwrap().usage().unwrap(),
        0,
        "a fresh region beside the limits"
    );
    assert_eq!((limits.gpu_uuid.as_str(), limits.gpu_index), (uuid(0).as_str(), 0));
    let leftovers: Vec<_> = node
        .written()
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".tmp")))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn two_gpus_split_and_all_device() {
    if skip_unless_root("two_gpus_split_and_all_device") {
        return;
    }
    let node = Node::new(2, true);
    node.config("annotations = true\n[defaults]\nsplit_count = 2\n");
    ok(node.cdi(&["generate"]));
    reference_load(&node.spec_path()).unwrap();
    let spec = load(&node.spec_path());
    let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["slice0", "slice1", "slice2", "slice3", "all"]);
    for (name, minor) in [("slice0", 0), ("slice1", 0), ("slice2", 1), ("slice3", 1)] {
        let d = device(&spec, name);
        assert_eq!(d.container_edits.device_nodes[0].minor, Some(minor), "{name}");
        assert_eq!(d.annotations["gpuslice.dev/memory-bytes"], (40 * GIB).to_string());
        assert_eq!(d.annotations["gpuslice.dev/cores-percent"], "50");
        let l = Limits::load(&limits_path(&node.state_dir(), name)).unwrap();
        assert_eq!((l.memory_bytes, l.cores_percent, l.gpu_index), (40 * GIB, 50, u32::from(minor != 0)));
    }
    let all = device(&spec, "all");
    assert_eq!(all.container_edits.env, ["GPUSLICE_SLICE=slice0,slice1,slice2,slice3"]);
    let nodes: Vec<&str> = all.container_edits.device_nodes.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(
        nodes,
        [
            "/dev/nvidia0",
            "/dev/gpuslice/slices/slice0/region",
            &format!("/dev/gpuslice/gpus/{}/board", uuid(0)),
            "/dev/gpuslice/slices/slice1/region",
            "/dev/nvidia1",
            "/dev/gpuslice/slices/slice2/region",
            &format!("/dev/gpuslice/gpus/{}/board", uuid(1)),
            "/dev/gpuslice/slices/slice3/region",
        ],
        "each GPU node and each board once, every region"
    );
    assert_eq!(all.container_edits.hooks.len(), 8, "every slice's hooks");
}

/// The state devices a slice's container needs in its device cgroup: the engine reads their
/// type and numbers from the host's nodes when it creates the container.
#[test]
fn a_slice_carries_its_region_and_board_devices() {
    if skip_unless_root("a_slice_carries_its_region_and_board_devices") {
        return;
    }
    let node = Node::new(1, true);
    node.config("[defaults]\nsplit_count = 2\n");
    ok(node.cdi(&["generate"]));
    let spec = load(&node.spec_path());
    let nodes = &device(&spec, "slice1").container_edits.device_nodes;
    let region = gpuslice_core::region::region_path(&node.state_dir(), "slice1");
    let board = gpuslice_core::board::board_path(&node.state_dir(), &uuid(0));
    for (n, host) in nodes[1..].iter().zip([&region, &board]) {
        assert_eq!(n.host_path.as_deref(), host.to_str());
        assert_eq!((n.kind.as_deref(), n.major, n.minor, n.permissions.as_deref()), (None, None, None, Some("rw")));
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(host).unwrap().file_type().is_block_device(), "{}", host.display());
    }
    assert_eq!(nodes[1].path, "/dev/gpuslice/slices/slice1/region");
    // Opened as the host tools open them: a region and a board no container can resize.
    assert!(gpuslice_core::region::Region::open(&region).unwrap().is_device());
    let b = gpuslice_core::board::Board::open(&board).unwrap();
    assert!(b.is_device());
    let names: Vec<String> = b.slices().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["slice0", "slice1"]);
}

/// split_count = 64 is the documented maximum: every slice gets its limits, its region and a
/// record on its GPU's board (a board of 63 records stopped generate at the 64th slice).
#[test]
fn sixty_four_slices_on_one_gpu() {
    if skip_unless_root("sixty_four_slices_on_one_gpu") {
        return;
    }
    let node = Node::new(1, true);
    node.config("[defaults]\nsplit_count = 64\n");
    ok(node.cdi(&["generate"]));
    reference_load(&node.spec_path()).unwrap();
    let spec = load(&node.spec_path());
    assert_eq!(spec.devices.len(), 65);
    for i in 0..64 {
        let name = format!("slice{i}");
        let l = Limits::load(&limits_path(&node.state_dir(), &name)).unwrap();
        assert_eq!(l.memory_bytes, 1280 << 20, "{name}");
        gpuslice_core::region::Region::open(&gpuslice_core::region::region_path(&node.state_dir(), &name)).unwrap();
    }
    let board =
        gpuslice_core::board::Board::open(&gpuslice_core::board::board_path(&node.state_dir(), &uuid(0))).unwrap();
    assert_eq!(board.slices().len(), 64);
    // Again, with a board full of forged records: generate rebuilds it and finishes.
    for i in 0..gpuslice_core::board::BOARD_RECORDS {
        let _ = board.claim(&format!("forged{i}"), gpuslice_core::config::Priority::High, 100);
    }
    let out = ok(node.cdi(&["generate"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dropped 63 board records of no configured slice"),
        "{out:?}"
    );
    let names: Vec<String> = board.slices().into_iter().map(|s| s.name).collect();
    assert_eq!(names, (0..64).map(|i| format!("slice{i}")).collect::<Vec<_>>());
}

#[test]
fn eight_gpus_sixty_four_slices() {
    if skip_unless_root("eight_gpus_sixty_four_slices") {
        return;
    }
    let node = Node::new(8, true);
    node.config("annotations = true\n[defaults]\nsplit_count = 8\n");
    ok(node.cdi(&["generate", "--output", node.root().join("cdi/spec.json").to_str().unwrap()]));
    let path = node.root().join("cdi/spec.json");
    reference_load(&path).unwrap();
    let spec: Spec = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(spec.devices.len(), 65);
    assert_eq!(spec.devices[63].name, "slice63");
    assert_eq!(spec.devices[63].container_edits.device_nodes[0].path, "/dev/nvidia7");
    assert_eq!(spec.devices[63].annotations["gpuslice.dev/memory-bytes"], (10 * GIB).to_string());
    assert!(!node.spec_path().exists(), "--output replaces the default path");
}

#[test]
fn mixed_modes_overrides_explicit_slices_and_overcommit_match_golden() {
    if skip_unless_root("mixed_modes_overrides_explicit_slices_and_overcommit_match_golden") {
        return;
    }
    let node = Node::with_memory(&[80, 80, 48], true);
    node.config(&format!(
        r#"
annotations = true
[defaults]
split_count = 2
[[gpu]]
index = 1
mode = "none"
[[gpu]]
uuid = "{}"
memory_scaling = 1.5
cores_policy = "borrow"
slices = [ {{ name = "inference", memory = "40GiB", cores = 60, priority = "high" }}, {{ memory = "32GiB", cores = 40 }} ]
"#,
        uuid(2)
    ));
    for (format, golden) in [("yaml", "mixed.yaml"), ("json", "mixed.json")] {
        let out = ok(node.cdi(&["generate", "--output", "-", "--format", format]));
        let text = stdout(&out).replace(node.root().to_str().unwrap(), "@ROOT@");
        check_golden(golden, &text);
        let file = node.root().join(format!("check.{format}"));
        std::fs::write(&file, stdout(&out)).unwrap();
        reference_load(&file).unwrap();
    }
    assert!(!node.spec_path().exists(), "--output - writes no spec file");
    let l = Limits::load(&limits_path(&node.state_dir(), "gpu1")).unwrap();
    assert_eq!((l.mode.as_str(), l.memory_bytes, l.cores_percent), ("none", 80 * GIB, 100));
    assert!(!gpuslice_core::region::region_path(&node.state_dir(), "gpu1").exists(), "a whole GPU has no region");
    let l = Limits::load(&limits_path(&node.state_dir(), "inference")).unwrap();
    assert_eq!((l.memory_bytes, l.cores_percent, l.gpu_index), (40 * GIB, 60, 2));
    assert_eq!((l.cores_policy.as_str(), l.priority.as_str()), ("borrow", "high"));
    let l = Limits::load(&limits_path(&node.state_dir(), "slice2")).unwrap();
    assert_eq!((l.cores_policy.as_str(), l.priority.as_str()), ("borrow", "normal"), "the GPU's policy");
    let l = Limits::load(&limits_path(&node.state_dir(), "slice0")).unwrap();
    assert_eq!((l.cores_policy.as_str(), l.priority.as_str()), ("cap", "normal"), "the defaults");
}

/// Compares with `tests/golden/<name>`; `GPUSLICE_BLESS=1` rewrites it.
fn check_golden(name: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    let text = text.replace(env!("CARGO_PKG_VERSION"), "@VERSION@");
    if std::env::var_os("GPUSLICE_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(text, want, "{} differs (GPUSLICE_BLESS=1 to accept the new output)", path.display());
}

#[test]
fn regenerating_keeps_generation_until_limits_change() {
    if skip_unless_root("regenerating_keeps_generation_until_limits_change") {
        return;
    }
    let node = Node::new(1, true);
    node.config("[defaults]\nsplit_count = 2\n");
    ok(node.cdi(&["generate"]));
    ok(node.cdi(&["generate"]));
    let gen_of = |name: &str| Limits::load(&limits_path(&node.state_dir(), name)).unwrap().generation;
    assert_eq!(gen_of("slice0"), 1);
    node.config("[defaults]\nsplit_count = 2\nmemory_scaling = 0.5\n");
    ok(node.cdi(&["generate"]));
    assert_eq!(gen_of("slice0"), 2);
    assert_eq!(Limits::load(&limits_path(&node.state_dir(), "slice0")).unwrap().memory_bytes, 20 * GIB);
    node.config("[defaults]\nsplit_count = 2\nmemory_scaling = 0.5\ncores_policy = \"borrow\"\n");
    ok(node.cdi(&["generate"]));
    assert_eq!(gen_of("slice0"), 3, "a policy change is a new generation");
    node.config("[defaults]\nsplit_count = 2\nmemory_scaling = 0.5\ncores_policy = \"borrow\"\npriority = \"high\"\n");
    ok(node.cdi(&["generate"]));
    ok(node.cdi(&["generate"]));
    assert_eq!(gen_of("slice0"), 4, "so is a priority change, once");
}

#[test]
fn a_format_1_limits_file_is_replaced_by_format_2() {
    if skip_unless_root("a_format_1_limits_file_is_replaced_by_format_2") {
        return;
    }
    let node = Node::new(1, true);
    node.config("");
    let path = limits_path(&node.state_dir(), "slice0");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let v1 = format!(
        "format=1\nslice=slice0\nmode=shim\ngpu_uuid={}\ngpu_index=0\nmemory_bytes={}\ncores_percent=100\ngeneration=4\n",
        uuid(0),
        80 * GIB
    );
    std::fs::write(&path, v1).unwrap();
    let mut status = std::process::Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"));
    status.args(["status", "--state-dir", node.state_dir().to_str().unwrap()]);
    let out = ok(node.env(&mut status).output().unwrap());
    assert!(stdout(&out).contains("format 1 is not supported"), "{}", stdout(&out));
    ok(node.cdi(&["generate"]));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\nformat=2\n") && text.contains("\ncores_policy=cap\npriority=normal\n"), "{text}");
}

#[test]
fn without_annotations_the_spec_is_cdi_0_5_0() {
    if skip_unless_root("without_annotations_the_spec_is_cdi_0_5_0") {
        return;
    }
    let node = Node::new(1, true);
    node.config("annotations = false\n");
    ok(node.cdi(&["generate"]));
    reference_load(&node.spec_path()).unwrap();
    let spec = load(&node.spec_path());
    assert_eq!(spec.cdi_version, "0.5.0", "hostPath needs 0.5.0, nothing needs more");
    assert!(spec.annotations.is_empty() && spec.devices.iter().all(|d| d.annotations.is_empty()));
    let text = std::fs::read_to_string(node.spec_path()).unwrap();
    assert!(!text.contains("annotations"), "{text}");
}

#[test]
fn annotations_are_opt_in_and_need_cdi_0_6_0() {
    if skip_unless_root("annotations_are_opt_in_and_need_cdi_0_6_0") {
        return;
    }
    let node = Node::new(1, true);
    node.config("annotations = true\n");
    ok(node.cdi(&["generate"]));
    reference_load(&node.spec_path()).unwrap();
    let spec = load(&node.spec_path());
    assert_eq!(spec.cdi_version, "0.6.0", "annotations need 0.6.0 and nothing needs more");
    let slice0 = device(&spec, "slice0");
    assert_eq!(slice0.annotations["gpuslice.dev/gpu-uuid"], uuid(0));
    assert_eq!(slice0.annotations["gpuslice.dev/memory-bytes"], (80 * GIB).to_string());
    assert_eq!(slice0.annotations["gpuslice.dev/cores-percent"], "100");
    assert_eq!(slice0.annotations["gpuslice.dev/cores-policy"], "cap");
    assert_eq!(slice0.annotations["gpuslice.dev/priority"], "normal");
    assert_eq!(spec.annotations["gpuslice.dev/driver-version"], "580.95.05");
    assert_eq!(spec.annotations["gpuslice.dev/cuda-version"], "13.0");
}

#[test]
fn nvml_lib_comes_from_the_environment_too() {
    if skip_unless_root("nvml_lib_comes_from_the_environment_too") {
        return;
    }
    let node = Node::new(1, true);
    node.config("");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"));
    node.env(&mut cmd).env("GPUSLICE_NVML_LIB", fake_nvml());
    cmd.args(["list", "--config", node.config_path().to_str().unwrap()]);
    let out = ok(cmd.output().unwrap());
    assert!(stdout(&out).contains(&uuid(0)), "{}", stdout(&out));
}

#[test]
fn list_prints_the_plan_as_a_table() {
    let node = Node::with_memory(&[80, 24], false);
    node.config(
        "[defaults]\nsplit_count = 2\n[[gpu]]\nindex = 0\nslices = [{ memory = \"40GiB\", cores = 50 }, \
         { memory = \"40GiB\", cores = 50, cores_policy = \"borrow\", priority = \"high\" }]\n\
         [[gpu]]\nindex = 1\nmode = \"none\"\n",
    );
    let out = ok(node.cdi(&["list"]));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let cols = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[0]),
        ["SLICE", "GPU", "UUID", "MEMORY", "(GiB)", "CORES", "(%)", "POLICY", "PRIORITY", "MODE"]
    );
    assert_eq!(cols(lines[1]), ["slice0", "0", &uuid(0), "40.00", "50", "cap", "normal", "shim"]);
    assert_eq!(cols(lines[2]), ["slice1", "0", &uuid(0), "40.00", "50", "borrow", "high", "shim"]);
    assert_eq!(cols(lines[3]), ["gpu1", "1", &uuid(1), "24.00", "100", "-", "-", "none"]);
    assert!(node.written().is_empty(), "list writes nothing");
}

/// After an upgrade the state of the previous release is there: plain-file regions (layout 3)
/// and a 4096-byte board. generate replaces them with devices, not refuses them for ever.
#[test]
fn an_older_releases_state_is_replaced_by_devices() {
    if skip_unless_root("an_older_releases_state_is_replaced_by_devices") {
        return;
    }
    let node = Node::new(1, true);
    node.config("[defaults]\nsplit_count = 2\n");
    let region = gpuslice_core::region::region_path(&node.state_dir(), "slice0");
    std::fs::create_dir_all(region.parent().unwrap()).unwrap();
    gpuslice_core::region::Region::create(&region).unwrap();
    let mut old = std::fs::read(&region).unwrap();
    old[8..12].copy_from_slice(&3u32.to_ne_bytes());
    std::fs::write(&region, &old).unwrap();
    let board = gpuslice_core::board::board_path(&node.state_dir(), &uuid(0));
    std::fs::create_dir_all(board.parent().unwrap()).unwrap();
    std::fs::write(&board, vec![0u8; 4096]).unwrap();
    ok(node.cdi(&["generate"]));
    use std::os::unix::fs::FileTypeExt;
    for path in [&region, &board] {
        assert!(std::fs::symlink_metadata(path).unwrap().file_type().is_block_device(), "{}", path.display());
    }
    gpuslice_core::region::Region::open(&region).unwrap();
    assert_eq!(gpuslice_core::board::Board::open(&board).unwrap().slices().len(), 2);
}

/// A GPU in mode mps: its slices carry the MPS variables from their limits and its pipe
/// directory, which `generate` creates; `all` holds only the other GPU's slices.
#[test]
fn mps_slices_carry_their_limits_and_the_pipe_directory() {
    if skip_unless_root("mps_slices_carry_their_limits_and_the_pipe_directory") {
        return;
    }
    let node = Node::new(2, true);
    node.config("[[gpu]]\nindex = 0\nmode = \"mps\"\nsplit_count = 4\n");
    ok(node.cdi(&["generate"]));
    reference_load(&node.spec_path()).unwrap();
    let spec = load(&node.spec_path());
    let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["slice0", "slice1", "slice2", "slice3", "slice4", "all"]);
    let s1 = device(&spec, "slice1");
    assert_eq!(
        s1.container_edits.env,
        [
            "GPUSLICE_SLICE=slice1",
            "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=20480M",
        ]
    );
    let nodes: Vec<&str> = s1.container_edits.device_nodes.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(nodes, ["/dev/nvidia0"], "no region or board in mode mps");
    let pipe = gpuslice_core::mps::pipe_dir(&node.state_dir(), &uuid(0));
    let m = &s1.container_edits.mounts;
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].host_path.as_str(), m[0].container_path.as_str()), (pipe.to_str().unwrap(), "/tmp/nvidia-mps"));
    assert!(["nosuid", "nodev", "noexec"].iter().all(|o| m[0].options.iter().any(|x| x == o)), "{m:?}");
    assert!(pipe.is_dir(), "generate creates the pipe directory, the mount's source");
    let l = Limits::load(&limits_path(&node.state_dir(), "slice1")).unwrap();
    assert_eq!((l.mode.as_str(), l.memory_bytes, l.cores_percent), ("mps", 20 * GIB, 25));
    assert!(!gpuslice_core::region::region_path(&node.state_dir(), "slice1").exists(), "no region in mode mps");
    let all = device(&spec, "all");
    assert_eq!(all.container_edits.env, ["GPUSLICE_SLICE=slice4"]);
    assert!(all.container_edits.mounts.is_empty());
    let list = node.cdi(&["list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.lines().any(|l| l.starts_with("slice0") && l.ends_with("mps")), "{text}");
}
