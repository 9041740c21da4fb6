//! A slice on the simulated GPU, as a container would see it.
//!
//! The host side lives in `<tmp>/host`: `slices/<name>/limits` written with the real limits
//! code, `slices/<name>/region`. Processes under test run in a private mount namespace in which
//! `<tmp>/view/slices/<name>` is a read-only bind of the host directory and `region` a
//! read-write bind on top of it; they get `GPUSLICE_STATE_DIR=<tmp>/view`, the shim preloaded
//! and the simulated driver installed as `libcuda.so.1` and `libnvidia-ml.so.1`.
//! [`Node::command_in_container`] mounts the slices exactly as the hook does instead (a
//! read-only tmpfs whose source is `gpuslice`, regions and boards on zram devices:
//! [`Node::on_devices`]).

#![allow(dead_code)]

pub mod client;
pub mod images;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use gpuslice_core::board::{Board, board_path};
use gpuslice_core::config::{CoresPolicy, Mode, Priority};
use gpuslice_core::limits::{Limits, limits_path, slice_dir};
use gpuslice_core::region::{Region, region_path};

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;
pub const UUID0: &str = "GPU-11111111-2222-3333-4444-555555555555";
pub const UUID1: &str = "GPU-66666666-7777-8888-9999-000000000000";

/// `target/<profile>`, from the test binary's path.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

fn find(name: &str) -> PathBuf {
    let dir = profile_dir();
    for p in [dir.join("deps").join(name), dir.join(name)] {
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found under {}: run `cargo build --workspace`", dir.display());
}

/// The built shim. `cargo test` does not build a cdylib for its own integration tests, so a
/// library older than its sources is refused rather than silently tested.
pub fn shim() -> PathBuf {
    let lib = find("libgpuslice.so");
    let built = std::fs::metadata(&lib).and_then(|m| m.modified()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["vgpu-shim/src", "core/src"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            let changed = entry.metadata().and_then(|m| m.modified()).unwrap();
            assert!(
                changed <= built,
                "{} is older than {}: run `cargo build -p gpuslice-shim` (or `make test`) first",
                lib.display(),
                entry.path().display()
            );
        }
    }
    lib
}

/// The probe binaries, built once per test process into `target/<profile>/cuda-probe/`.
pub fn probes() -> &'static (PathBuf, PathBuf) {
    static PROBES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PROBES.get_or_init(|| {
        let out = profile_dir().join(format!("cuda-probe-{}", std::process::id()));
        let driver = out.join("driver");
        std::fs::create_dir_all(&driver).unwrap();
        // Copies, not links: the linker records one DT_NEEDED per distinct file.
        let fake = find("libfakegpu.so");
        for name in ["libcuda.so.1", "libnvidia-ml.so.1"] {
            std::fs::copy(&fake, driver.join(name)).unwrap();
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cuda-probe/build.sh");
        let st = Command::new("bash").arg(&script).arg(&out).arg(&driver).status().unwrap();
        assert!(st.success(), "building the CUDA probe failed");
        (out.join("cuda-probe"), out.join("cuda-probe-direct"))
    })
}

/// The CUDA version of the simulated driver the suite runs against: `GPUSLICE_TEST_CUDA_VERSION`
/// (`make test` runs the shim's suite at 12080 and again at 13000), 12080 by default.
pub fn cuda_version() -> i32 {
    match std::env::var("GPUSLICE_TEST_CUDA_VERSION") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("GPUSLICE_TEST_CUDA_VERSION={v:?} is not a CUDA version")),
        Err(_) => 12080,
    }
}

/// A C program of `vgpu-shim/tests/c/` built against the generated `gpuslice_cuda_abi.h`, once
/// per test process.
pub fn c_program(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = profile_dir().join(format!("shim-tests-{}", std::process::id())).join(name);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    if !out.exists() {
        // Built under a name of this thread's, then renamed: tests build it concurrently.
        let tmp = out.with_extension(format!("{:?}", std::thread::current().id()).replace(['(', ')'], ""));
        let src = root.join("vgpu-shim/tests/c").join(format!("{name}.c"));
        let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(root.join("cuda-abi/include"))
            .arg("-o")
            .arg(&tmp)
            .arg(&src)
            .arg("-ldl")
            .status()
            .unwrap();
        assert!(st.success(), "compiling {} failed", src.display());
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// Installs the simulated driver in `dir` under the real driver's names.
pub fn install_driver(dir: &Path) {
    let fake = find("libfakegpu.so");
    for name in ["libcuda.so.1", "libnvidia-ml.so.1"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&fake, &link).unwrap();
    }
}

/// Whether the tests that need a private mount namespace can run; prints the skip if not.
pub fn skip_unless_root(test: &str) -> bool {
    gpuslice_test_support::skip_unless_root(test, "a read-only bind mount")
        || gpuslice_test_support::skip_unless_program(test, "/usr/bin/unshare")
}

/// A GPU for the simulated driver.
pub struct Gpu {
    pub uuid: &'static str,
    pub memory_gib: u64,
}

pub struct Node {
    pub dir: tempfile::TempDir,
    /// The simulated driver's CUDA version, and the probe's default `--cuda-version`.
    pub cuda_version: i32,
    pub driver: PathBuf,
    pub slices: Vec<String>,
}

impl Drop for Node {
    /// [`Node::on_devices`] put regions and boards on zram devices: remove them.
    fn drop(&mut self) {
        gpuslice_core::state::remove_devices(&self.host());
    }
}

impl Node {
    /// A node with one 80 GiB GPU.
    pub fn new() -> Node {
        Node::with_gpus(&[Gpu { uuid: UUID0, memory_gib: 80 }])
    }

    pub fn with_gpus(gpus: &[Gpu]) -> Node {
        Node::with_gpus_at(gpus, cuda_version())
    }

    /// A node with one 80 GiB GPU whose driver is CUDA `version` (`cuda_version` of the
    /// simulated driver, as `cuDriverGetVersion` reports it).
    pub fn at_cuda_version(version: i32) -> Node {
        Node::with_gpus_at(&[Gpu { uuid: UUID0, memory_gib: 80 }], version)
    }

    pub fn with_gpus_at(gpus: &[Gpu], cuda_version: i32) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = format!("driver_version = \"580.95.05\"\ncuda_version = {cuda_version}\n");
        for (i, g) in gpus.iter().enumerate() {
            cfg += &format!(
                "[[gpu]]\nuuid = \"{}\"\nname = \"Simulated H100\"\nmemory = \"{}GiB\"\nsm_count = 132\nminor = {i}\npci_bus_id = \"00000000:{:02X}:00.0\"\n",
                g.uuid,
                g.memory_gib,
                i + 1
            );
        }
        std::fs::write(dir.path().join("fakegpu.toml"), cfg).unwrap();
        let driver = dir.path().join("driver");
        std::fs::create_dir_all(&driver).unwrap();
        install_driver(&driver);
        for sub in ["host/slices", "view/slices", "fakegpu-state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Node { dir, cuda_version, driver, slices: Vec::new() }
    }

    pub fn host(&self) -> PathBuf {
        self.dir.path().join("host")
    }
    pub fn view(&self) -> PathBuf {
        self.dir.path().join("view")
    }

    /// Adds a slice of `memory` bytes on GPU `uuid` (index `index`), as `gpuslice-cdi` would.
    pub fn slice(&mut self, name: &str, uuid: &str, index: u32, memory: u64) -> &mut Self {
        self.slice_cores(name, uuid, index, memory, 100)
    }

    /// A slice with a compute share of `cores` percent.
    pub fn slice_cores(&mut self, name: &str, uuid: &str, index: u32, memory: u64, cores: u32) -> &mut Self {
        self.write_limits_cores(name, uuid, index, memory, cores);
        self.install_slice(name, uuid, Priority::Normal, cores)
    }

    /// A slice with any limits (policy, priority).
    pub fn slice_with(&mut self, limits: Limits) -> &mut Self {
        let written = self.store_limits(limits);
        self.install_slice(&written.slice, &written.gpu_uuid, written.priority, written.cores_percent)
    }

    /// What the hook does besides the limits: the GPU's board with the slice's record (and a
    /// mount point for it in the view), the region, the slice's directory in the view.
    fn install_slice(&mut self, name: &str, uuid: &str, priority: Priority, cores: u32) -> &mut Self {
        let board = board_path(&self.host(), uuid);
        Board::open_or_create(&board).unwrap().claim(name, priority, cores).unwrap();
        let view_board = board_path(&self.view(), uuid);
        std::fs::create_dir_all(view_board.parent().unwrap()).unwrap();
        std::fs::write(&view_board, b"").unwrap();
        Region::create(&region_path(&self.host(), name)).unwrap();
        std::fs::create_dir_all(slice_dir(&self.view(), name)).unwrap();
        self.slices.push(name.to_owned());
        self
    }

    /// Writes the limits of a slice of `memory` bytes on GPU `uuid`, 100 % capped, normal
    /// priority, in the current format; returns what was written (with its generation).
    pub fn write_limits(&self, name: &str, uuid: &str, index: u32, memory: u64) -> Limits {
        self.write_limits_cores(name, uuid, index, memory, 100)
    }

    /// As [`Node::write_limits`], with a compute share of `cores` percent.
    pub fn write_limits_cores(&self, name: &str, uuid: &str, index: u32, memory: u64, cores: u32) -> Limits {
        self.store_limits(Limits {
            slice: name.to_owned(),
            mode: Mode::Shim,
            gpu_uuid: uuid.to_owned(),
            gpu_index: index,
            memory_bytes: memory,
            cores_percent: cores,
            cores_policy: CoresPolicy::Cap,
            priority: Priority::Normal,
            generation: 1,
        })
    }

    /// Writes any limits, as `gpuslice-cdi` would (a change is a new generation).
    pub fn store_limits(&self, limits: Limits) -> Limits {
        limits.store(&self.host()).unwrap()
    }

    pub fn limits_path(&self, name: &str) -> PathBuf {
        limits_path(&self.host(), name)
    }

    pub fn region(&self, name: &str) -> Region {
        Region::open(&region_path(&self.host(), name)).unwrap()
    }

    /// The mount commands that make the view, then `exec "$@"`.
    fn mount_script(&self) -> String {
        self.mount_script_for(&self.slices)
    }

    /// The mount script with only `slices` in the view (a process in one slice of several).
    fn mount_script_for(&self, slices: &[String]) -> String {
        let mut s = String::from("set -e\n");
        if let Ok(gpus) = std::fs::read_dir(self.host().join("gpus")) {
            for gpu in gpus.flatten() {
                let uuid = gpu.file_name().into_string().unwrap();
                s += &format!(
                    "mount --bind '{}' '{}'\n",
                    board_path(&self.host(), &uuid).display(),
                    board_path(&self.view(), &uuid).display()
                );
            }
        }
        for name in slices {
            let host = slice_dir(&self.host(), name);
            let view = slice_dir(&self.view(), name);
            s += &format!(
                "mount --bind '{h}' '{v}'\nmount -o remount,bind,ro '{v}'\nmount --bind '{h}/region' '{v}/region'\n",
                h = host.display(),
                v = view.display()
            );
        }
        s + "exec \"$@\"\n"
    }

    /// A command running `program args` in the container-like view, shim preloaded.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c", &self.mount_script(), "sh"]);
        c.arg(program).args(args);
        self.env(&mut c);
        c.env("LD_PRELOAD", shim());
        c
    }

    /// Like [`Node::command`], in slice `slice` alone of the node's slices.
    pub fn command_in(&self, slice: &str, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &self.mount_script_for(&[slice.to_owned()]),
            "sh",
        ]);
        c.arg(program).args(args);
        self.env(&mut c);
        c.env("LD_PRELOAD", shim());
        c
    }

    /// Puts every slice's region and every GPU's board on a zram device, as `gpuslice-cdi
    /// generate` does (needs root); [`Node::command_in_container`] needs them there.
    pub fn on_devices(&mut self) -> &mut Self {
        use gpuslice_core::board::BoardSlice;
        let mut boards: std::collections::BTreeMap<String, Vec<BoardSlice>> = Default::default();
        for name in &self.slices {
            let limits = Limits::load(&self.limits_path(name)).unwrap();
            gpuslice_core::state::ensure_region(&self.host(), name).unwrap();
            boards.entry(limits.gpu_uuid.clone()).or_default().push(BoardSlice {
                name: name.clone(),
                priority: limits.priority,
                cores: limits.cores_percent,
            });
        }
        for (uuid, slices) in boards {
            gpuslice_core::state::ensure_board(&self.host(), &uuid, &slices, 1).unwrap();
        }
        self
    }

    /// The mounts the hook makes, with the state tmpfs at `<at>/gpuslice`.
    fn hook_mounts(&self, at: &Path) -> String {
        let state = at.join("gpuslice");
        let mut s = format!("mkdir -p '{st}'\nmount -t tmpfs -o mode=0755 gpuslice '{st}'\n", st = state.display());
        for name in &self.slices {
            let host = slice_dir(&self.host(), name);
            let view = state.join("slices").join(name);
            s += &format!(
                "mkdir -p '{v}'\nmount --bind '{h}' '{v}'\nmount -o remount,bind,ro '{v}'\nmount --bind '{h}/region' '{v}/region'\n",
                h = host.display(),
                v = view.display()
            );
        }
        if let Ok(gpus) = std::fs::read_dir(self.host().join("gpus")) {
            for gpu in gpus.flatten() {
                let uuid = gpu.file_name().into_string().unwrap();
                let view = state.join("gpus").join(&uuid);
                s += &format!(
                    "mkdir -p '{v}'\ntouch '{v}/board'\nmount --bind '{h}' '{v}/board'\n",
                    h = board_path(&self.host(), &uuid).display(),
                    v = view.display()
                );
            }
        }
        s + &format!("mount -o remount,bind,ro '{}'\n", state.display())
    }

    /// `program args` with the slices where and as the hook mounts them in a container (at
    /// `/run/gpuslice`, over a private tmpfs on `/run`), the shim preloaded and
    /// `GPUSLICE_STATE_DIR` pointing elsewhere. Needs [`Node::on_devices`].
    pub fn command_in_container(&self, program: &Path, args: &[&str]) -> Command {
        self.command_in_container_after("", Path::new("/run"), program, args)
    }

    /// Like [`Node::command_in_container`] with the state tmpfs at `<at>/gpuslice`, running the
    /// shell commands `prelude` (an attack, say) after the mounts and before the program.
    pub fn command_in_container_after(&self, prelude: &str, at: &Path, program: &Path, args: &[&str]) -> Command {
        let mut script = String::from("set -e\n");
        if at == Path::new("/run") {
            script += "mount -t tmpfs gpuslice-test /run\n";
        }
        script += &self.hook_mounts(at);
        script += prelude;
        script += "\nexec \"$@\"\n";
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c", &script, "sh"]);
        c.arg(program).args(args);
        self.env(&mut c);
        c.env("LD_PRELOAD", shim()).env("GPUSLICE_STATE_DIR", "/nonexistent");
        c
    }

    /// The same without the shim and without the view: the host's own view of the GPU.
    pub fn bare(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args);
        self.env(&mut c);
        c
    }

    pub fn env<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.env("FAKEGPU_CONFIG", self.dir.path().join("fakegpu.toml"))
            .env("FAKEGPU_STATE_DIR", self.dir.path().join("fakegpu-state"))
            .env("LD_LIBRARY_PATH", &self.driver)
            .env("CUDA_PROBE_CUDA_VERSION", self.cuda_version.to_string())
            .env("GPUSLICE_STATE_DIR", self.view())
            .env_remove("GPUSLICE_MEMORY_LIMIT")
            .env_remove("GPUSLICE_LOG")
    }

    pub fn probe(&self, args: &[&str]) -> Output {
        self.command(&probes().0, args).output().unwrap()
    }

    pub fn spawn_probe(&self, args: &[&str]) -> Child {
        self.command(&probes().0, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    /// What the simulated GPU itself says is in use on GPU `index` (NVML, no shim).
    pub fn device_used(&self, index: u32) -> u64 {
        let out = self.bare(&probes().0, &["nvml-meminfo", "--index", &index.to_string()]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        value(&out, "used")
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `key=value` from the probe's output.
pub fn value(o: &Output, key: &str) -> u64 {
    find_value(&stdout(o), key).unwrap_or_else(|| panic!("no {key}= in {:?} / {:?}", stdout(o), stderr(o)))
}

pub fn find_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')?.trim().parse().ok())
}

pub fn text_value(o: &Output, key: &str) -> Option<String> {
    stdout(o).lines().find_map(|l| Some(l.strip_prefix(key)?.strip_prefix('=')?.trim().to_owned()))
}

pub fn ok(o: Output) -> Output {
    assert!(o.status.success(), "probe failed: {}\nstdout: {}\nstderr: {}", o.status, stdout(&o), stderr(&o));
    o
}

/// Waits until the child prints `holding`, returning what it printed before.
pub fn wait_holding(child: &mut Child) -> String {
    match holding_or_exit(child) {
        Ok(before) => before,
        Err(output) => panic!("probe exited before holding: {output}"),
    }
}

/// Waits until the child prints `holding` (`Ok` with what it printed before) or exits (`Err`
/// with everything it printed, stderr included).
pub fn holding_or_exit(child: &mut Child) -> Result<String, String> {
    use std::io::{BufRead, BufReader};
    let out = child.stdout.take().unwrap();
    let mut reader = BufReader::new(out);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("{seen}{err}"));
        }
        if line.trim() == "holding" {
            // Keep the pipe open so the child never sees EPIPE.
            std::mem::forget(reader);
            return Ok(seen);
        }
        seen.push_str(&line);
    }
}

/// Children killed when the test ends, however it ends.
pub struct Reaper(pub Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
