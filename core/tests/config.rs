//! Parsing and checking `config.toml`: every bad input gets one line naming key and value.

use gpuslice_core::config::{ComputeGuard, Config, ConfigError, CoresPolicy, GuardPolicy, Mode, Priority};
use gpuslice_core::units::{ByteSize, Span};

fn err(text: &str) -> String {
    match Config::parse(text) {
        Ok(c) => panic!("accepted bad config {text:?}: {c:?}"),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "error is not one line: {s:?}");
            s
        }
    }
}

#[test]
fn empty_file_gives_documented_defaults() {
    let c = Config::parse("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.kind, "gpuslice.dev/vgpu");
    assert_eq!(c.spec_dir.to_str(), Some("/var/run/cdi"));
    assert_eq!(c.state_dir.to_str(), Some("/run/gpuslice"));
    assert_eq!(c.hook_path.to_str(), Some("/usr/bin/gpuslice-hook"));
    assert_eq!(c.shim_path.to_str(), Some("/usr/lib/gpuslice/libgpuslice.so"));
    assert_eq!(c.driver_root.to_str(), Some("/"));
    assert_eq!(c.defaults.mode, Mode::Shim);
    assert_eq!(c.defaults.split_count, 1);
    assert_eq!((c.defaults.memory_scaling, c.defaults.core_scaling), (1.0, 1.0));
    assert_eq!((c.defaults.cores_policy, c.defaults.priority), (CoresPolicy::Cap, Priority::Normal));
    let g = &c.guard;
    assert_eq!(g.interval, Span::from_millis(1000));
    assert_eq!((g.memory_policy, g.unsliced_policy), (GuardPolicy::Kill, GuardPolicy::Log));
    assert_eq!((g.context_tolerance, g.max_tolerance), (ByteSize(256 << 20), ByteSize(1 << 30)));
    assert_eq!((g.compute_guard, g.compute_window, g.compute_margin), (ComputeGuard::Off, Span::from_millis(5000), 15));
}

#[test]
fn guard_table_parses() {
    let c = Config::parse(
        r#"
[guard]
interval = "500ms"
memory_policy = "log"
context_tolerance = "512MiB"
max_tolerance = "2GiB"
unsliced_policy = "kill"
compute_guard = "throttle"
compute_window = 10
compute_margin = 20
lock_hold_limit = "5s"
"#,
    )
    .unwrap();
    let g = &c.guard;
    assert_eq!(g.interval, Span::from_millis(500));
    assert_eq!((g.memory_policy, g.unsliced_policy), (GuardPolicy::Log, GuardPolicy::Kill));
    assert_eq!((g.context_tolerance, g.max_tolerance), (ByteSize(512 << 20), ByteSize(2 << 30)));
    assert_eq!(
        (g.compute_guard, g.compute_window, g.compute_margin),
        (ComputeGuard::Throttle, Span::from_millis(10_000), 20)
    );
    assert_eq!(g.lock_hold_limit, Span::from_millis(5000));
}

#[test]
fn shipped_config_parses_to_the_defaults() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/config.toml")).unwrap();
    assert_eq!(Config::parse(&text).unwrap(), Config::default());
}

#[test]
fn full_config_parses() {
    let c = Config::parse(
        r#"
kind = "example.com/gpu"
spec_dir = "/etc/cdi"
[defaults]
mode = "shim"
split_count = 4
memory_scaling = 1.5
core_scaling = 2
cores_policy = "borrow"
priority = "normal"
[[gpu]]
index = 1
mode = "none"
[[gpu]]
uuid = "GPU-aaaa"
priority = "high"
slices = [ { name = "big", memory = "10GiB", cores = 30, cores_policy = "cap" }, { memory = 536870912, cores = 70, priority = "normal" } ]
"#,
    )
    .unwrap();
    assert_eq!(c.kind, "example.com/gpu");
    assert_eq!(c.defaults.split_count, 4);
    assert_eq!(c.defaults.core_scaling, 2.0);
    assert_eq!(c.gpus[0].mode, Some(Mode::None));
    let slices = c.gpus[1].slices.as_ref().unwrap();
    assert_eq!(slices[0].name.as_deref(), Some("big"));
    assert_eq!(slices[0].memory, ByteSize(10 << 30));
    assert_eq!(slices[1].memory, ByteSize(512 << 20));
    assert_eq!((slices[0].cores_policy, slices[0].priority), (Some(CoresPolicy::Cap), None));
    assert_eq!((slices[1].cores_policy, slices[1].priority), (None, Some(Priority::Normal)));
    let s = c.settings_for(7, "gpu-AAAA");
    assert_eq!(s.split_count, 4, "uuid matching ignores case and inherits defaults");
    assert_eq!(
        (s.cores_policy, s.priority),
        (CoresPolicy::Borrow, Priority::High),
        "policy from defaults, priority from the override"
    );
    assert!(s.slices.is_some());
    let s = c.settings_for(0, "GPU-other");
    assert_eq!((s.cores_policy, s.priority), (CoresPolicy::Borrow, Priority::Normal));
}

#[test]
fn unknown_keys_are_named() {
    assert!(err("spec_dri = \"/x\"").contains("unknown field `spec_dri`"));
    let e = err("[defaults]\nsplit = 2");
    assert!(e.contains("line 2") && e.contains("unknown field `split`"), "{e}");
    let e = err("[[gpu]]\nindex = 0\nslices = [{ memory = 1, cores = 1, weight = 2 }]");
    assert!(e.contains("unknown field `weight`"), "{e}");
    assert!(err("[default]\nmode = \"shim\"").contains("unknown field `default`"));
}

#[test]
fn bad_values_are_named_with_their_key() {
    let cases: &[(&str, &[&str])] = &[
        ("[defaults]\nsplit_count = 0", &["defaults.split_count = 0", "between 1 and 64"]),
        ("[defaults]\nsplit_count = 65", &["defaults.split_count = 65"]),
        ("[defaults]\nsplit_count = -1", &["defaults.split_count"]),
        ("[defaults]\nmemory_scaling = -1", &["defaults.memory_scaling = -1", "greater than 0"]),
        ("[defaults]\nmemory_scaling = 0", &["defaults.memory_scaling = 0"]),
        ("[defaults]\nmemory_scaling = nan", &["defaults.memory_scaling = NaN"]),
        ("[defaults]\nmemory_scaling = \"lots\"", &["defaults.memory_scaling", "\"lots\""]),
        ("[defaults]\ncore_scaling = -0.5", &["defaults.core_scaling = -0.5"]),
        ("[defaults]\ncore_scaling = true", &["defaults.core_scaling", "true"]),
        ("[defaults]\nmode = \"vgpu\"", &["defaults.mode", "vgpu"]),
        (
            "[defaults]\nsplit_count = 2\ncores_policy = \"share\"",
            &["line 3", "defaults.cores_policy", "`share`", "`cap` or `borrow`"],
        ),
        ("[defaults]\ncores_policy = 1", &["line 2", "defaults.cores_policy", "wanted string"]),
        ("[defaults]\npriority = \"low\"", &["line 2", "defaults.priority", "`low`", "`normal` or `high`"]),
        ("[[gpu]]\nindex = 0\ncores_policy = \"Borrow\"", &["line 3", "gpu[0].cores_policy", "`Borrow`"]),
        ("[[gpu]]\nindex = 0\npriority = \"realtime\"", &["gpu[0].priority", "`realtime`"]),
        (
            "[[gpu]]\nindex = 0\nslices = [{ memory = 1, cores = 1 }, { memory = 1, cores = 1, priority = \"urgent\" }]",
            &["line 3", "gpu[0].slices[1].priority", "`urgent`"],
        ),
        (
            "[[gpu]]\nindex = 0\nslices = [{ memory = 1, cores = 1, cores_policy = \"burst\" }]",
            &["gpu[0].slices[0].cores_policy", "`burst`"],
        ),
        ("[[gpu]]\nindex = 0\nsplit_count = 0", &["gpu[0].split_count = 0"]),
        ("[[gpu]]\nindex = 0\nmemory_scaling = -2", &["gpu[0].memory_scaling = -2"]),
        ("[[gpu]]\nsplit_count = 2", &["gpu[0]", "needs `index` or `uuid`"]),
        (
            "[[gpu]]\nindex = 0\nslices = [{ memory = \"1GiB\", cores = 0 }]",
            &["gpu[0].slices[0].cores = 0", "between 1 and 100"],
        ),
        ("[[gpu]]\nindex = 0\nslices = [{ memory = \"1GiB\", cores = 101 }]", &["gpu[0].slices[0].cores = 101"]),
        (
            &format!("[[gpu]]\nindex = 0\nslices = [{}]", vec!["{ memory = 1, cores = 1 }"; 65].join(", ")),
            &["gpu[0].slices = [65 slices]", "more than 64 slices"],
        ),
        ("[[gpu]]\nindex = 0\nslices = [{ memory = \"1 gigs\", cores = 1 }]", &["gpu[0].slices[0].memory", "1 gigs"]),
        ("[[gpu]]\nindex = 0\nslices = [{ memory = 0, cores = 1 }]", &["gpu[0].slices[0].memory"]),
        (
            "[[gpu]]\nindex = 0\nslices = [{ name = \"a\", memory = 1, cores = 1 }, { name = \"a\", memory = 1, cores = 1 }]",
            &["gpu[0].slices[1].name = \"a\"", "another slice"],
        ),
        (
            "[[gpu]]\nindex = 0\nslices = [{ name = \"a\", memory = 1, cores = 1 }]\n[[gpu]]\nindex = 1\nslices = [{ name = \"a\", memory = 1, cores = 1 }]",
            &["gpu[1].slices[0].name = \"a\""],
        ),
        ("[[gpu]]\nindex = 0\nslices = [{ name = \"slice3\", memory = 1, cores = 1 }]", &["\"slice3\"", "reserved"]),
        ("[[gpu]]\nindex = 0\nslices = [{ name = \"all\", memory = 1, cores = 1 }]", &["\"all\"", "reserved"]),
        ("[[gpu]]\nindex = 0\nslices = [{ name = \"a/b\", memory = 1, cores = 1 }]", &["name = \"a/b\""]),
        ("[[gpu]]\nindex = 0\nslices = []", &["gpu[0].slices"]),
        ("[[gpu]]\nindex = 0\nsplit_count = 2\nslices = [{ memory = 1, cores = 1 }]", &["gpu[0].split_count = 2"]),
        ("[[gpu]]\nindex = 0\nmode = \"none\"\nslices = [{ memory = 1, cores = 1 }]", &["gpu[0].mode"]),
        ("[[gpu]]\nindex = 0\n[[gpu]]\nindex = 0", &["gpu[1].index = 0", "twice"]),
        ("kind = \"vgpu\"", &["kind = \"vgpu\"", "vendor/class"]),
        ("kind = \"-x.com/vgpu\"", &["kind = \"-x.com/vgpu\""]),
        ("spec_dir = \"relative/dir\"", &["spec_dir = \"relative/dir\"", "absolute"]),
        ("state_dir = 3", &["state_dir", "3"]),
        ("split_count = ", &["line 1"]),
        ("[guard]\ninterval = \"50ms\"", &["guard.interval = \"50ms\"", "between 100ms and 60s"]),
        ("[guard]\ninterval = \"2m\"", &["guard.interval = \"120s\""]),
        ("[guard]\ninterval = \"soon\"", &["line 2", "guard.interval", "`soon`"]),
        ("[guard]\ninterval = -1", &["guard.interval", "negative"]),
        ("[guard]\nmemory_policy = \"warn\"", &["line 2", "guard.memory_policy", "`warn`", "`kill` or `log`"]),
        ("[guard]\nunsliced_policy = \"ignore\"", &["guard.unsliced_policy", "`ignore`"]),
        ("[guard]\ncompute_guard = \"freeze\"", &["guard.compute_guard", "`freeze`", "`off` or `throttle`"]),
        ("[guard]\ncompute_window = \"1s\"", &["guard.compute_window = \"1s\"", "two intervals (2s)"]),
        ("[guard]\nlock_hold_limit = \"500ms\"", &["guard.lock_hold_limit = \"500ms\"", "between 1s and 10 minutes"]),
        ("[guard]\ncompute_margin = 0", &["guard.compute_margin = 0", "between 1 and 100"]),
        ("[guard]\ncontext_tolerance = \"1TiB\"", &["guard.max_tolerance", "at least context_tolerance"]),
        ("[guard]\ncontext_tolerance = \"lots\"", &["guard.context_tolerance", "lots"]),
        ("[guard]\nperiod = 1", &["unknown field `period`"]),
        ("[[gpu]]\nindex = 0\nmemory_policy = \"stop\"", &["gpu[0].memory_policy", "`stop`"]),
        (
            "[[gpu]]\nindex = 0\nslices = [{ memory = 1, cores = 1, memory_policy = \"nice\" }]",
            &["gpu[0].slices[0].memory_policy", "`nice`"],
        ),
    ];
    for (text, wants) in cases {
        let e = err(text);
        for want in *wants {
            assert!(e.contains(want), "error for {text:?} is {e:?}; it should mention {want:?}");
        }
    }
}

#[test]
fn load_names_a_missing_file() {
    let e = Config::load(std::path::Path::new("/nonexistent/gpuslice.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(matches!(&e, ConfigError::Read { path, .. } if path.ends_with("gpuslice.toml")));
    assert!(e.to_string().contains("No such file"), "{e}");
}
