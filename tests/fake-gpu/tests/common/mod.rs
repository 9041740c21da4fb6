//! Running checks against the built `libfakegpu.so` in a fresh process.
//!
//! The library reads its config once per process, so each scenario runs in a child: the test
//! re-executes its own binary, filtered to itself, with `FAKEGPU_CONFIG` and
//! `FAKEGPU_STATE_DIR` pointing into a temporary directory. In the child, [`is_child`] is
//! true and the test runs its checks; the parent asserts the child ran exactly that test
//! and passed.
#![allow(dead_code)]

pub mod cuda;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tempfile::TempDir;

const CHILD_ENV: &str = "FAKEGPU_TEST_CHILD";

/// `true` in the child process started by [`Fixture::run`] for test `name`.
pub fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == name)
}

/// The cdylib Cargo built for this test run: `target/<profile>/deps/libfakegpu.so`, beside
/// the test binary `target/<profile>/deps/<test>-<hash>`. (`cargo test` does not refresh the
/// copy in `target/<profile>/`, so that one may be stale.) `FAKEGPU_LIB` overrides it.
pub fn lib_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FAKEGPU_LIB") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("locating the test binary");
    let lib = exe.parent().expect("the test binary lives in target/<profile>/deps").join("libfakegpu.so");
    assert!(lib.is_file(), "{} is missing: the fakegpu cdylib should be built with the tests", lib.display());
    lib
}

/// A temporary machine: a config file and a state directory.
pub struct Fixture {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
}

impl Fixture {
    pub fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let config_path = dir.path().join("fakegpu.toml");
        std::fs::write(&config_path, config).expect("writing the config");
        let state_dir = dir.path().join("state");
        Self { dir, config_path, state_dir }
    }

    /// A command re-running test `name` in a child, with the fixture's environment.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("locating the test binary"));
        cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, name)
            .env("FAKEGPU_CONFIG", &self.config_path)
            .env("FAKEGPU_STATE_DIR", &self.state_dir);
        cmd
    }

    /// Run test `name` in a child and require that it ran and passed.
    pub fn run(&self, name: &str) -> Output {
        run_child(self.command(name), name)
    }
}

/// Run `cmd` (made by [`Fixture::command`]) and require that test `name` ran once and passed.
pub fn run_child(mut cmd: Command, name: &str) -> Output {
    let out = cmd.output().expect("starting the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "child for {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    out
}

/// A config with `n` GPUs whose every value differs with the index (see [`Gpu::nth`]).
pub fn config_with(n: u32, extra: &str) -> String {
    let mut s = format!("driver_version = \"580.95.05\"\ncuda_version = 13000\n{extra}\n");
    for i in 0..n {
        s += &Gpu::nth(i).toml();
    }
    s
}

/// What GPU `i` of [`config_with`] should look like through NVML.
#[derive(Debug, Clone)]
pub struct Gpu {
    pub uuid: String,
    pub name: String,
    pub memory: u64,
    pub sm_count: u32,
    pub minor: u32,
    pub bus: u32,
    pub bus_id: String,
    pub mig_mode: Option<bool>,
}

impl Gpu {
    pub fn nth(i: u32) -> Self {
        let bus = 0x19 + 0x10 * i;
        Self {
            uuid: format!("GPU-{i:08x}-2222-3333-4444-5555555555{i:02x}"),
            name: format!("Simulated H100 #{i}"),
            // 80GiB, 40GiB, 80GiB, …: memory need not be equal across GPUs.
            memory: if i.is_multiple_of(2) { 80 << 30 } else { 40 << 30 },
            sm_count: 132 - i,
            // Minors in reverse, so a mix-up of index and minor shows.
            minor: 100 - i,
            bus,
            bus_id: format!("00000000:{bus:02X}:00.0"),
            mig_mode: match i % 3 {
                0 => None,
                1 => Some(false),
                _ => Some(true),
            },
        }
    }

    fn toml(&self) -> String {
        // Written with a lower-case, 4-digit domain; NVML answers in its own form.
        let written_bus_id = format!("0000:{:02x}:00.0", self.bus);
        let mut s = format!(
            "[[gpu]]\nuuid = \"{}\"\nname = \"{}\"\nmemory = \"{}GiB\"\nsm_count = {}\n\
             minor = {}\npci_bus_id = \"{}\"\n",
            self.uuid,
            self.name,
            self.memory >> 30,
            self.sm_count,
            self.minor,
            written_bus_id,
        );
        if let Some(mode) = self.mig_mode {
            s += &format!("mig_mode = {mode}\n");
        }
        s
    }
}

/// Whether a C compiler (`$CC`, else `cc`) is there to build C clients; says `skipped: …`
/// for `test` when not.
pub fn have_cc(test: &str) -> bool {
    !gpuslice_test_support::skip_unless_cc(test, "tests/cuda-probe")
}

/// The CUDA probe (`tests/cuda-probe`) built against this library.
#[derive(Debug)]
pub struct Probes {
    /// dlopen + cuGetProcAddress (or `--dlsym`).
    pub runtime: PathBuf,
    /// Linked against `libcuda.so.1` directly.
    pub direct: PathBuf,
    /// Holds the library as `libcuda.so.1` and `libnvidia-ml.so.1`: the loader path to run
    /// them with.
    pub driver: PathBuf,
    /// Where all of it is.
    pub dir: PathBuf,
}

impl Probes {
    /// A command running the probe build `binary` (`runtime` or `direct`) with `args`, the
    /// driver on the loader's path and this process's environment (the fixture's config and
    /// state dir in a child).
    pub fn command(&self, binary: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary);
        cmd.args(args).env("LD_LIBRARY_PATH", &self.driver);
        cmd
    }
}

/// Environment variable: where a parent test built the probes, for its children.
pub const PROBE_DIR_ENV: &str = "FAKEGPU_TEST_PROBE_DIR";

/// The probes: built once per test run into `target/<profile>/fakegpu-probe/`, or, in a
/// child, where the parent said ([`PROBE_DIR_ENV`]).
pub fn probes() -> &'static Probes {
    static PROBES: OnceLock<Probes> = OnceLock::new();
    PROBES.get_or_init(|| {
        let at = |out: PathBuf| Probes {
            runtime: out.join("cuda-probe"),
            direct: out.join("cuda-probe-direct"),
            driver: out.join("driver"),
            dir: out,
        };
        if let Some(dir) = std::env::var_os(PROBE_DIR_ENV) {
            return at(dir.into());
        }
        let profile = lib_path().parent().and_then(Path::parent).expect("target/<profile>/deps").to_owned();
        let out = profile.join("fakegpu-probe");
        let driver = out.join("driver");
        std::fs::create_dir_all(&driver).expect("creating the probe's driver dir");
        // Copies, not links: the linker records one DT_NEEDED per distinct file. Renamed into
        // place, so that a library someone has mapped is never rewritten.
        for name in ["libcuda.so.1", "libnvidia-ml.so.1"] {
            let tmp = driver.join(format!(".{name}.{}", std::process::id()));
            std::fs::copy(lib_path(), &tmp).expect("copying the library");
            std::fs::rename(&tmp, driver.join(name)).expect("installing the library as the driver");
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cuda-probe/build.sh");
        let built = Command::new("bash").arg(&script).arg(&out).arg(&driver).output().expect("running build.sh");
        assert!(built.status.success(), "building the CUDA probe failed:\n{}", String::from_utf8_lossy(&built.stderr));
        at(out)
    })
}

/// The `key=value` lines of a probe's output.
pub fn keys(stdout: &[u8]) -> std::collections::BTreeMap<String, String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}
