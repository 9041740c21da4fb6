//! Planning a GPU in mode `mig`: one device per existing MIG device.

use gpuslice_core::config::{Config, Mode};
use gpuslice_core::mig::MigInstance;
use gpuslice_core::plan::{GpuInfo, plan};

const GIB: u64 = 1 << 30;

fn gpu(index: u32) -> GpuInfo {
    GpuInfo {
        index,
        uuid: format!("GPU-{index:08}-0000-0000-0000-000000000000"),
        name: "Simulated H100".into(),
        memory_total: 80 * GIB,
        minor: index,
        pci_bus_id: format!("00000000:{:02X}:00.0", index + 1),
        mig_enabled: false,
        sm_count: 132,
        mig: Vec::new(),
    }
}

fn instance(gi: u32, ci: u32, memory_gib: u64, sms: u32) -> MigInstance {
    MigInstance {
        uuid: format!("MIG-{gi:08}-{ci:04}-0000-0000-000000000000"),
        gpu_instance_id: gi,
        compute_instance_id: ci,
        memory_bytes: memory_gib * GIB,
        sm_count: sms,
        profile: format!("{}g.{memory_gib}gb", sms / 16),
        gi_access_minor: 0,
        ci_access_minor: 0,
    }
}

fn mig_gpu(index: u32) -> GpuInfo {
    GpuInfo {
        mig_enabled: true,
        mig: vec![instance(1, 0, 40, 60), instance(5, 0, 20, 32), instance(5, 1, 20, 16)],
        ..gpu(index)
    }
}

fn err(text: &str, gpus: &[GpuInfo]) -> String {
    let e = match Config::parse(text) {
        Ok(c) => plan(&c, gpus).unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn each_mig_device_is_one_device_named_by_gpu_and_instance() {
    let config = Config::parse("[[gpu]]\nindex = 0\nmode = \"mig\"").unwrap();
    let p = plan(&config, &[mig_gpu(0), gpu(1)]).unwrap();
    let got: Vec<(&str, Mode, u64, u32)> =
        p.devices.iter().map(|d| (d.name.as_str(), d.mode, d.memory_bytes, d.cores_percent)).collect();
    assert_eq!(
        got,
        [
            ("mig0-1", Mode::Mig, 40 * GIB, 45),
            ("mig0-5", Mode::Mig, 20 * GIB, 24),
            ("mig0-5-1", Mode::Mig, 20 * GIB, 12),
            // GPU 1 stays in the default mode, and numbering of slices starts at 0.
            ("slice0", Mode::Shim, 80 * GIB, 100),
        ]
    );
    let d = &p.devices[0];
    assert_eq!(d.mig.as_ref().unwrap().uuid, "MIG-00000001-0000-0000-0000-000000000000");
    assert_eq!(d.gpu_uuid, "GPU-00000000-0000-0000-0000-000000000000");
    let limits = d.limits();
    assert_eq!((limits.mode, limits.memory_bytes, limits.slice.as_str()), (Mode::Mig, 40 * GIB, "mig0-1"));
    assert!(p.devices[3].mig.is_none());
}

#[test]
fn mode_mig_with_mig_off_is_one_error_naming_the_key() {
    let e = err("[defaults]\nmode = \"mig\"", &[gpu(0)]);
    assert!(e.contains("defaults.mode") && e.contains("MIG mode off") && e.contains("-mig 1"), "{e}");
    let e = err("[[gpu]]\nindex = 0\nmode = \"mig\"", &[gpu(0)]);
    assert!(e.contains("gpu[0].mode"), "{e}");
}

#[test]
fn mode_mig_without_instances_says_how_to_make_them() {
    let g = GpuInfo { mig_enabled: true, ..gpu(0) };
    let e = err("[defaults]\nmode = \"mig\"", &[g]);
    assert!(e.contains("no MIG instance") && e.contains("-cgi"), "{e}");
}

#[test]
fn slicing_keys_are_refused_for_a_mig_gpu() {
    for (key, line) in [
        ("split_count", "split_count = 2"),
        ("memory_scaling", "memory_scaling = 1.5"),
        ("core_scaling", "core_scaling = 2.0"),
        ("cores_policy", "cores_policy = \"borrow\""),
        ("priority", "priority = \"high\""),
        ("memory_policy", "memory_policy = \"log\""),
        ("slices", "slices = [{ memory = \"1GiB\", cores = 10 }]"),
    ] {
        let e = err(&format!("[[gpu]]\nindex = 0\nmode = \"mig\"\n{line}"), &[mig_gpu(0)]);
        assert!(e.contains(&format!("gpu[0].{key}")) && e.contains("does not apply to mode \"mig\""), "{key}: {e}");
        // Through the defaults' mode too.
        let e = err(&format!("[defaults]\nmode = \"mig\"\n[[gpu]]\nindex = 0\n{line}"), &[mig_gpu(0)]);
        assert!(e.contains(&format!("gpu[0].{key}")), "{key}: {e}");
    }
    // A GPU that overrides the mode back to shim keeps them.
    let ok = "[defaults]\nmode = \"mig\"\n[[gpu]]\nindex = 1\nmode = \"shim\"\nsplit_count = 2";
    let p = plan(&Config::parse(ok).unwrap(), &[mig_gpu(0), gpu(1)]).unwrap();
    assert_eq!(p.devices.iter().filter(|d| d.mode == Mode::Shim).count(), 2);
}

#[test]
fn mig_names_are_reserved() {
    let e = err("[[gpu]]\nindex = 0\nslices = [{ name = \"mig0-1\", memory = \"1GiB\", cores = 10 }]", &[gpu(0)]);
    assert!(e.contains("is reserved"), "{e}");
    assert!(
        Config::parse("[[gpu]]\nindex = 0\nslices = [{ name = \"mig-ish\", memory = \"1GiB\", cores = 10 }]").is_ok()
    );
}

#[test]
fn mig_layout_is_checked_and_only_for_a_mig_gpu() {
    let ok = "[[gpu]]\nindex = 0\nmode = \"mig\"\nmig_layout = [\"3g.40gb\", \"2g.20gb\"]";
    assert_eq!(Config::parse(ok).unwrap().gpus[0].mig_layout.as_deref().map(<[String]>::len), Some(2));
    let e = Config::parse("[[gpu]]\nindex = 0\nmode = \"mig\"\nmig_layout = [\"3g.40gb\", \"3c.40gb\"]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gpu[0].mig_layout[1]") && e.contains("3c.40gb") && !e.contains('\n'), "{e}");
    let e = Config::parse("[[gpu]]\nindex = 0\nmode = \"shim\"\nmig_layout = [\"3g.40gb\"]").unwrap_err().to_string();
    assert!(e.contains("gpu[0].mig_layout") && e.contains("only to a GPU in mode \"mig\""), "{e}");
    let e = Config::parse("[[gpu]]\nindex = 0\nmode = \"mig\"\nmig_layout = []").unwrap_err().to_string();
    assert!(e.contains("gpu[0].mig_layout") && e.contains("1 to 7"), "{e}");
}
