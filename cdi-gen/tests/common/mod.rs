//! A node on the simulated GPU: fake NVML config, a dev root with real device nodes, a
//! config file, spec and state dirs, all in one temporary directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const GIB: u64 = 1 << 30;

/// `libfakegpu.so`, built beside this test (a dev-dependency) or by `cargo build`.
pub fn fake_nvml() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    for candidate in [profile_dir.join("deps/libfakegpu.so"), profile_dir.join("libfakegpu.so")] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("libfakegpu.so not found under {}: run `cargo build -p fakegpu`", profile_dir.display());
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Prints the skip and says whether to skip: device nodes can only be made by root.
pub fn skip_unless_root(test: &str) -> bool {
    gpuslice_test_support::skip_unless_root(test, "creating device nodes with mknod")
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub gpus: usize,
}

impl Drop for Node {
    /// `generate` put each slice's region and each GPU's board on zram devices: remove them.
    fn drop(&mut self) {
        let left = gpuslice_core::state::remove_devices(&self.state_dir());
        if !left.is_empty() && !std::thread::panicking() {
            panic!("zram devices still open after the test: {left:?}");
        }
    }
}

pub fn uuid(i: usize) -> String {
    format!("GPU-{i:08x}-2222-3333-4444-555555555555")
}

impl Node {
    /// A node with `gpus` simulated H100s (80 GiB, minors 0..n), their device nodes and
    /// `nvidiactl` + `nvidia-uvm` under the dev root (when `nodes` is set).
    pub fn new(gpus: usize, nodes: bool) -> Node {
        Self::with_memory(&vec![80; gpus], nodes)
    }

    pub fn with_memory(memory_gib: &[u64], nodes: bool) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut fake = String::from("driver_version = \"580.95.05\"\ncuda_version = 13000\n");
        for (i, gib) in memory_gib.iter().enumerate() {
            fake += &format!(
                "[[gpu]]\nuuid = \"{}\"\nname = \"Simulated H100\"\nmemory = \"{gib}GiB\"\nsm_count = 132\nminor = {i}\npci_bus_id = \"00000000:{:02X}:00.0\"\n",
                uuid(i),
                i + 1
            );
        }
        std::fs::write(dir.path().join("fakegpu.toml"), fake).unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::create_dir_all(dir.path().join("fakegpu-state")).unwrap();
        let node = Node { dir, gpus: memory_gib.len() };
        if nodes {
            for i in 0..memory_gib.len() {
                node.mknod(&format!("nvidia{i}"), 195, i as u32);
            }
            node.mknod("nvidiactl", 195, 255);
            node.mknod("nvidia-uvm", 510, 0);
        }
        node
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn dev_root(&self) -> PathBuf {
        self.root().to_owned()
    }
    pub fn spec_dir(&self) -> PathBuf {
        self.root().join("cdi")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }
    pub fn config_path(&self) -> PathBuf {
        self.root().join("config.toml")
    }
    pub fn spec_path(&self) -> PathBuf {
        self.spec_dir().join("gpuslice.yaml")
    }

    pub fn mknod(&self, name: &str, major: u32, minor: u32) {
        let path = self.root().join("dev").join(name);
        let st = Command::new("mknod").arg(&path).arg("c").arg(major.to_string()).arg(minor.to_string()).status();
        assert!(st.unwrap().success(), "mknod {}", path.display());
    }

    /// Writes the gpuslice config: the paths of this node, then `body`.
    pub fn config(&self, body: &str) {
        let text = format!(
            "spec_dir = \"{}\"\nstate_dir = \"{}\"\nhook_path = \"/usr/bin/gpuslice-hook\"\n{body}",
            self.spec_dir().display(),
            self.state_dir().display()
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Sets the fake NVML's init error.
    pub fn fail_nvml_init(&self, error: &str) {
        let path = self.root().join("fakegpu.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("init_error = \"{error}\"\n{text}")).unwrap();
    }

    /// `gpuslice-cdi <args> --config … --nvml-lib … --dev-root …` (common flags after the subcommand).
    pub fn cdi(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"));
        cmd.args(args);
        if args.first().is_some_and(|a| *a != "validate") {
            cmd.arg("--config").arg(self.config_path()).arg("--nvml-lib").arg(fake_nvml());
            cmd.arg("--dev-root").arg(self.dev_root());
        }
        self.env(&mut cmd).output().unwrap()
    }

    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("FAKEGPU_CONFIG", self.root().join("fakegpu.toml"))
            .env("FAKEGPU_STATE_DIR", self.root().join("fakegpu-state"))
            .env_remove("GPUSLICE_NVML_LIB")
            .env_remove("GPUSLICE_LOG")
    }

    /// Files under the spec and state dirs, to show nothing was written.
    pub fn written(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in [self.spec_dir(), self.state_dir()] {
            walk(&dir, &mut out);
        }
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success, showing stderr when not.
pub fn ok(o: Output) -> Output {
    assert!(o.status.success(), "failed: {}\n{}", o.status, stderr(&o));
    o
}

/// Asserts failure with exactly one line on stderr containing every `wants`.
pub fn fails_with(o: &Output, wants: &[&str]) -> String {
    assert!(!o.status.success(), "succeeded but should fail: {}", stdout(o));
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "error is not one line: {err:?}");
    for w in wants {
        assert!(err.contains(w), "error {err:?} should mention {w:?}");
    }
    err
}

/// Loads a spec file with the reference CDI library, as an engine would.
pub fn reference_load(path: &Path) -> Result<(), String> {
    container_device_interface::spec::read_spec(&path.to_path_buf(), 1).map(|_| ()).map_err(|e| format!("{e:#}"))
}
