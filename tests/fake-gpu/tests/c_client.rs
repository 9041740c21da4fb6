//! A plain C program linked against the fake GPU as `libnvidia-ml.so.1`.

mod common;

use std::process::Command;

use common::{Fixture, Gpu, config_with, lib_path};
use fakegpu::state::DeviceState;

#[test]
fn a_c_program_linked_with_nvml_sees_the_machine() {
    let Some(cc) = gpuslice_test_support::c_compiler() else {
        gpuslice_test_support::skip(
            "a_c_program_linked_with_nvml_sees_the_machine",
            "no C compiler to build tests/c/nvml_query.c",
        );
        return;
    };
    let fx = Fixture::new(&config_with(2, ""));
    let libdir = fx.dir.path().join("lib");
    std::fs::create_dir(&libdir).expect("creating the driver dir");
    std::os::unix::fs::symlink(lib_path(), libdir.join("libnvidia-ml.so.1")).expect("linking libnvidia-ml.so.1");
    let exe = fx.dir.path().join("nvml_query");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/nvml_query.c");
    let built = Command::new(&cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Werror",
            "-I",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../cuda-abi/include"),
            "-o",
        ])
        .arg(&exe)
        .arg(source)
        .arg("-L")
        .arg(&libdir)
        .arg("-l:libnvidia-ml.so.1")
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .output()
        .expect("running the C compiler");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));

    let gpu1 = Gpu::nth(1);
    let state = DeviceState::open(&fx.state_dir, 1, gpu1.memory).expect("opening gpu 1");
    state.try_reserve(1 << 30).expect("reserving 1 GiB");

    let out = Command::new(&exe)
        .env("FAKEGPU_CONFIG", &fx.config_path)
        .env("FAKEGPU_STATE_DIR", &fx.state_dir)
        .output()
        .expect("running nvml_query");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let mut want = String::from("driver 580.95.05\ncount 2\n");
    for (i, used) in [(0, 0), (1, 1u64 << 30)] {
        let g = Gpu::nth(i);
        want += &format!(
            "gpu {i} name {}\ngpu {i} uuid {}\ngpu {i} memory total {} used {used} free {}\n\
             gpu {i} pci {}\n",
            g.name,
            g.uuid,
            g.memory,
            g.memory - used,
            g.bus_id
        );
    }
    assert_eq!(stdout, want);
}
