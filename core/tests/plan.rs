//! Planning slices from config and GPUs.

use gpuslice_core::config::{Config, CoresPolicy, GuardPolicy, Mode, Priority};
use gpuslice_core::plan::{GpuInfo, plan};

const GIB: u64 = 1 << 30;

fn gpu(index: u32, memory_gib: u64) -> GpuInfo {
    GpuInfo {
        index,
        uuid: format!("GPU-{index:08}-0000-0000-0000-000000000000"),
        name: "Simulated H100".into(),
        memory_total: memory_gib * GIB,
        minor: index,
        pci_bus_id: format!("00000000:{:02X}:00.0", index + 1),
        mig_enabled: false,
        sm_count: 132,
        mig: Vec::new(),
    }
}

fn names(text: &str, gpus: &[GpuInfo]) -> Vec<(String, u32, Mode, u64, u32)> {
    let p = plan(&Config::parse(text).unwrap(), gpus).unwrap();
    p.devices.into_iter().map(|d| (d.name, d.gpu_index, d.mode, d.memory_bytes, d.cores_percent)).collect()
}

fn plan_err(text: &str, gpus: &[GpuInfo]) -> String {
    let e = plan(&Config::parse(text).unwrap(), gpus).unwrap_err().to_string();
    assert!(!e.contains('\n'));
    e
}

#[test]
fn default_is_one_slice_per_gpu_in_index_order() {
    let got = names("", &[gpu(1, 40), gpu(0, 80)]);
    assert_eq!(
        got,
        vec![("slice0".into(), 0, Mode::Shim, 80 * GIB, 100), ("slice1".into(), 1, Mode::Shim, 40 * GIB, 100),]
    );
}

#[test]
fn equal_split_numbers_slices_across_gpus() {
    let got = names("[defaults]\nsplit_count = 4", &[gpu(0, 80), gpu(1, 80)]);
    assert_eq!(got.len(), 8);
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.0, format!("slice{i}"));
        assert_eq!(d.1, (i / 4) as u32);
        assert_eq!((d.3, d.4), (20 * GIB, 25));
    }
}

#[test]
fn split_rounds_memory_down_to_whole_mib_and_cores_down() {
    let got = names("[defaults]\nsplit_count = 3", &[gpu(0, 80)]);
    let expect = (80 * GIB / 3) / (1 << 20) * (1 << 20);
    assert!(got.iter().all(|d| d.3 == expect && d.4 == 33), "{got:?}");
}

#[test]
fn scaling_overcommits_memory_and_caps_cores() {
    let got = names("[defaults]\nsplit_count = 2\nmemory_scaling = 1.5\ncore_scaling = 3", &[gpu(0, 80)]);
    assert!(got.iter().all(|d| d.3 == 60 * GIB && d.4 == 100), "{got:?}");
    let got = names("[defaults]\nsplit_count = 64\ncore_scaling = 0.1", &[gpu(0, 64)]);
    assert!(got.iter().all(|d| d.3 == GIB && d.4 == 1), "cores never drop below 1: {got:?}");
}

#[test]
fn mixed_modes_overrides_and_explicit_slices() {
    let text = r#"
[defaults]
split_count = 2
[[gpu]]
index = 1
mode = "none"
[[gpu]]
uuid = "GPU-00000002-0000-0000-0000-000000000000"
slices = [ { name = "big", memory = "60GiB", cores = 70 }, { memory = "20GiB", cores = 30 } ]
[[gpu]]
index = 3
split_count = 4
core_scaling = 2
"#;
    let got = names(text, &[gpu(0, 80), gpu(1, 80), gpu(2, 80), gpu(3, 80)]);
    let want: Vec<(String, u32, Mode, u64, u32)> = vec![
        ("slice0".into(), 0, Mode::Shim, 40 * GIB, 50),
        ("slice1".into(), 0, Mode::Shim, 40 * GIB, 50),
        ("gpu1".into(), 1, Mode::None, 80 * GIB, 100),
        ("big".into(), 2, Mode::Shim, 60 * GIB, 70),
        ("slice2".into(), 2, Mode::Shim, 20 * GIB, 30),
        ("slice3".into(), 3, Mode::Shim, 20 * GIB, 50),
        ("slice4".into(), 3, Mode::Shim, 20 * GIB, 50),
        ("slice5".into(), 3, Mode::Shim, 20 * GIB, 50),
        ("slice6".into(), 3, Mode::Shim, 20 * GIB, 50),
    ];
    assert_eq!(got, want);
}

fn policies(text: &str, gpus: &[GpuInfo]) -> Vec<(String, CoresPolicy, Priority)> {
    let p = plan(&Config::parse(text).unwrap(), gpus).unwrap();
    p.devices.into_iter().map(|d| (d.name, d.cores_policy, d.priority)).collect()
}

#[test]
fn policy_and_priority_come_from_the_slice_then_the_gpu_then_the_defaults() {
    let text = r#"
[defaults]
split_count = 2
priority = "high"
[[gpu]]
index = 1
cores_policy = "borrow"
[[gpu]]
index = 2
priority = "normal"
slices = [
  { name = "inference", memory = "60GiB", cores = 70, priority = "high", cores_policy = "borrow" },
  { memory = "20GiB", cores = 30 },
]
"#;
    let got = policies(text, &[gpu(0, 80), gpu(1, 80), gpu(2, 80)]);
    let want = [
        ("slice0", CoresPolicy::Cap, Priority::High),
        ("slice1", CoresPolicy::Cap, Priority::High),
        ("slice2", CoresPolicy::Borrow, Priority::High),
        ("slice3", CoresPolicy::Borrow, Priority::High),
        ("inference", CoresPolicy::Borrow, Priority::High),
        ("slice4", CoresPolicy::Cap, Priority::Normal),
    ];
    assert_eq!(got, want.map(|(n, c, p)| (n.to_owned(), c, p)));
    let limits =
        plan(&Config::parse(text).unwrap(), &[gpu(0, 80), gpu(1, 80), gpu(2, 80)]).unwrap().devices[4].limits();
    assert_eq!((limits.cores_policy, limits.priority), (CoresPolicy::Borrow, Priority::High), "the limits carry them");
}

#[test]
fn the_guards_memory_policy_comes_from_the_slice_then_the_gpu_then_the_guard_table() {
    let text = r#"
[guard]
memory_policy = "log"
[defaults]
split_count = 2
[[gpu]]
index = 1
memory_policy = "kill"
[[gpu]]
index = 2
slices = [{ name = "strict", memory = "10GiB", cores = 50, memory_policy = "kill" }, { memory = "10GiB", cores = 50 }]
"#;
    let p = plan(&Config::parse(text).unwrap(), &[gpu(0, 80), gpu(1, 80), gpu(2, 80)]).unwrap();
    let got: Vec<(String, GuardPolicy)> = p.devices.into_iter().map(|d| (d.name, d.memory_policy)).collect();
    let want = [
        ("slice0", GuardPolicy::Log),
        ("slice1", GuardPolicy::Log),
        ("slice2", GuardPolicy::Kill),
        ("slice3", GuardPolicy::Kill),
        ("strict", GuardPolicy::Kill),
        ("slice4", GuardPolicy::Log),
    ];
    assert_eq!(got, want.map(|(n, m)| (n.to_owned(), m)));
    let default = plan(&Config::default(), &[gpu(0, 80)]).unwrap();
    assert_eq!(default.devices[0].memory_policy, GuardPolicy::Kill, "kill unless told otherwise");
}

#[test]
fn a_whole_gpu_keeps_the_default_policy_and_priority() {
    let text = r#"
[defaults]
cores_policy = "borrow"
priority = "high"
[[gpu]]
index = 1
mode = "none"
cores_policy = "borrow"
priority = "high"
"#;
    let got = policies(text, &[gpu(0, 80), gpu(1, 80)]);
    assert_eq!(
        got,
        [
            ("slice0".to_owned(), CoresPolicy::Borrow, Priority::High),
            ("gpu1".to_owned(), CoresPolicy::Cap, Priority::Normal)
        ]
    );
    let got = policies("[defaults]\nmode = \"none\"\npriority = \"high\"", &[gpu(0, 80)]);
    assert_eq!(got, [("gpu0".to_owned(), CoresPolicy::Cap, Priority::Normal)]);
}

#[test]
fn planning_is_deterministic() {
    let text = "[defaults]\nsplit_count = 3";
    let gpus = [gpu(2, 24), gpu(0, 80), gpu(1, 40)];
    assert_eq!(names(text, &gpus), names(text, &[gpu(0, 80), gpu(1, 40), gpu(2, 24)]));
}

#[test]
fn explicit_slices_may_overcommit_only_within_memory_scaling() {
    let text = "[[gpu]]\nindex = 0\nmemory_scaling = 1.5\nslices = [{ memory = \"60GiB\", cores = 50 }, { memory = \"60GiB\", cores = 50 }]";
    assert_eq!(names(text, &[gpu(0, 80)]).len(), 2);
    let text = "[[gpu]]\nindex = 0\nslices = [{ memory = \"60GiB\", cores = 50 }, { memory = \"30GiB\", cores = 50 }]";
    let e = plan_err(text, &[gpu(0, 80)]);
    assert!(e.contains("gpu[0].slices = [60GiB, 30GiB]") && e.contains("90.00 GiB") && e.contains("80.00 GiB"), "{e}");
}

#[test]
fn overrides_that_match_no_gpu_are_refused() {
    let e = plan_err("[[gpu]]\nindex = 2\nsplit_count = 2", &[gpu(0, 80), gpu(1, 80)]);
    assert!(e.contains("gpu[0].index = 2") && e.contains("matches no GPU"), "{e}");
    let e = plan_err("[[gpu]]\nuuid = \"GPU-nope\"\nsplit_count = 2", &[gpu(0, 80)]);
    assert!(e.contains("gpu[0].uuid = \"GPU-nope\"") && e.contains("GPU-00000000"), "{e}");
    let e =
        plan_err("[[gpu]]\nindex = 1\nuuid = \"GPU-00000000-0000-0000-0000-000000000000\"", &[gpu(0, 80), gpu(1, 80)]);
    assert!(e.contains("both this index and this uuid"), "{e}");
}

#[test]
fn two_overrides_for_one_gpu_are_refused() {
    let e = plan_err("[[gpu]]\nindex = 0\n[[gpu]]\nuuid = \"GPU-00000000-0000-0000-0000-000000000000\"", &[gpu(0, 80)]);
    assert!(e.contains("gpu[1].uuid") && e.contains("already overridden by gpu[0]"), "{e}");
}

#[test]
fn shim_mode_on_a_mig_gpu_is_refused_and_none_is_allowed() {
    let mut g = gpu(0, 80);
    g.mig_enabled = true;
    let e = plan_err("", std::slice::from_ref(&g));
    assert!(e.contains("defaults.mode") && e.contains("MIG"), "{e}");
    assert_eq!(names("[[gpu]]\nindex = 0\nmode = \"none\"", &[g])[0].0, "gpu0");
}

#[test]
fn no_gpus_plan_nothing() {
    assert!(names("", &[]).is_empty());
}
