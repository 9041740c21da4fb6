//! The `gpuslice-hook` binary against a bundle on disk, as a runtime runs it: the OCI state
//! on standard input, in a mount namespace of its own (the container's, in real life). Root
//! only; the engines' end-to-end tests (tests/e2e) run the same binary through Docker, podman
//! and runc.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{in_mount_namespace, mounts_under, snapshot};
use gpuslice_core::containers::{self, ContainerRecord};
use gpuslice_core::driver_files::parse_ld_cache;
use gpuslice_core::ld_cache::compose_container_cache;
use gpuslice_core::region::Region;

const HOOK: &str = env!("CARGO_BIN_EXE_gpuslice-hook");
const UUID0: &str = "GPU-6a3f1d2e-0000-4e2a-9c1b-000000000000";
const LIBDIR: &str = "usr/lib/x86_64-linux-gnu";
const SHIM_CONTENT: &[u8] = b"the interception library";
const IMAGE_PRELOAD: &str = "/usr/lib/libimage-preload.so\n";

/// A host with a (pretend) driver, the interception library, slice state, and one container
/// bundle whose rootfs the hook sets up.
struct World {
    _dir: tempfile::TempDir,
    base: PathBuf,
    driver: PathBuf,
    state: PathBuf,
    shim: PathBuf,
    bundle: PathBuf,
    rootfs: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        gpuslice_core::state::remove_devices(&self.state);
    }
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let driver = base.join("driver");
        let lib = driver.join(LIBDIR);
        fs::create_dir_all(&lib).unwrap();
        let mut cache = Vec::new();
        for (base_name, soname) in [
            ("libcuda", "libcuda.so.1"),
            ("libnvidia-ml", "libnvidia-ml.so.1"),
            ("libnvidia-ptxjitcompiler", "libnvidia-ptxjitcompiler.so.1"),
        ] {
            let file = format!("{base_name}.so.580.95.05");
            fs::write(lib.join(&file), format!("driver file {file}")).unwrap();
            symlink(&file, lib.join(soname)).unwrap();
            cache.push((soname.to_owned(), Path::new("/").join(LIBDIR).join(soname)));
        }
        fs::create_dir_all(driver.join("etc")).unwrap();
        fs::write(driver.join("etc/ld.so.cache"), compose_container_cache(None, &cache).bytes).unwrap();
        fs::create_dir_all(driver.join("usr/bin")).unwrap();
        fs::write(driver.join("usr/bin/nvidia-smi"), "driver tool nvidia-smi").unwrap();
        let gpu = driver.join("proc/driver/nvidia/gpus/0000:01:00.0");
        fs::create_dir_all(&gpu).unwrap();
        fs::write(
            gpu.join("information"),
            format!("Model: \t\t NVIDIA H100 80GB HBM3\nGPU UUID: \t {UUID0}\nBus Location: \t 0000:01:00.0\nDevice Minor: \t 0\n"),
        )
        .unwrap();

        let shim = base.join("libgpuslice.so");
        fs::write(&shim, SHIM_CONTENT).unwrap();
        let bundle = base.join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in ["etc", "usr/bin", "usr/lib", "run", "tmp"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::write(rootfs.join("etc/ld.so.preload"), IMAGE_PRELOAD).unwrap();
        // The image's own cache: one library of its own and a stale CUDA compat libcuda.
        let image_cache = [
            ("libimage.so.1".to_owned(), PathBuf::from("/opt/image/lib/libimage.so.1")),
            ("libcuda.so.1".to_owned(), PathBuf::from("/usr/local/cuda/compat/libcuda.so.1")),
        ];
        fs::write(rootfs.join("etc/ld.so.cache"), compose_container_cache(None, &image_cache).bytes).unwrap();
        fs::write(bundle.join("config.json"), r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#).unwrap();
        let state = base.join("state");
        World { _dir: dir, base, driver, state, shim, bundle, rootfs }
    }

    /// What `gpuslice-cdi generate` makes for `slices` (on GPU 0, as [`World::slice_args`]
    /// describes them): their limits, their regions and the GPU's board on zram devices.
    fn generate(&self, slices: &[&str]) -> &Self {
        let mut board = Vec::new();
        for name in slices {
            let args = gpuslice_hook::slice::SliceArgs {
                name: (*name).to_owned(),
                state_dir: self.state.clone(),
                mode: Some("shim".into()),
                gpu_uuid: Some(UUID0.into()),
                gpu_index: Some(0),
                memory_bytes: Some(4 << 30),
                cores_percent: Some(50),
                cores_policy: Some("cap".into()),
                priority: Some("normal".into()),
            };
            let limits = args.limits().unwrap().unwrap().store(&self.state).unwrap();
            gpuslice_core::state::ensure_region(&self.state, name).unwrap();
            board.push(gpuslice_core::board::BoardSlice {
                name: (*name).to_owned(),
                priority: limits.priority,
                cores: 50,
            });
        }
        gpuslice_core::state::ensure_board(&self.state, UUID0, &board, 1).unwrap();
        self
    }

    /// The state a runtime writes, with this test's process standing in for the container's
    /// first one, and a Kubernetes container name among the annotations.
    fn state_json(&self, id: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.0.2","id":"{id}","status":"creating","pid":{},"bundle":"{}","annotations":{{"io.kubernetes.cri.container-name":"trainer","other":"x"}}}}"#,
            std::process::id(),
            self.bundle.display()
        )
    }

    /// The host-only record of container `id` for `slice`, if there is one.
    fn record(&self, id: &str, slice: &str) -> Option<ContainerRecord> {
        let path = ContainerRecord::path(&self.state, id, slice);
        path.exists().then(|| ContainerRecord::load(&path).unwrap())
    }

    /// The arguments gpuslice-cdi puts in the spec for `slice` (on GPU 0, 4 GiB, 50 % capped, normal priority).
    fn slice_args(&self, slice: &str) -> Vec<String> {
        vec![
            "--slice".into(),
            slice.into(),
            format!("--state-dir={}", self.state.display()),
            "--mode=shim".into(),
            format!("--gpu-uuid={UUID0}"),
            "--gpu-index=0".into(),
            "--memory-bytes=4294967296".into(),
            "--cores-percent=50".into(),
            "--cores-policy=cap".into(),
            "--priority=normal".into(),
            format!("--driver-root={}", self.driver.display()),
            format!("--shim-path={}", self.shim.display()),
        ]
    }

    fn hook(&self, subcommand: &str, args: &[String], stdin: &str) -> Output {
        let mut child = Command::new(HOOK)
            .arg(subcommand)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The hook may exit before reading everything; a broken pipe is its business.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    }

    fn create(&self, slice: &str, id: &str) -> Output {
        self.hook("create-container", &self.slice_args(slice), &self.state_json(id))
    }

    fn inside(&self, path: &str) -> PathBuf {
        self.rootfs.join(path.trim_start_matches('/'))
    }

    fn region(&self, slice: &str) -> Region {
        Region::open(&self.state.join("slices").join(slice).join("region")).unwrap()
    }

    fn attached(&self, slice: &str) -> Vec<String> {
        self.region(slice).containers().unwrap().into_iter().map(|c| c.id).collect()
    }
}

fn assert_ok(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{what}: {:?}\n{stderr}", out.status);
}

/// Exit status 1 and exactly one line on standard error, which is returned.
fn assert_refused(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(stderr.starts_with("gpuslice-hook: ") && stderr.ends_with('\n'), "{what}: {stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "{what}: {stderr:?}");
    stderr
}

fn assert_read_only(path: &Path) {
    let err = fs::OpenOptions::new().write(true).open(path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{}: {err}", path.display());
}

#[test]
fn create_container_sets_up_the_slice_and_poststop_takes_it_back() {
    in_mount_namespace("create_container_sets_up_the_slice_and_poststop_takes_it_back", || {
        let w = World::new();
        w.generate(&["slice0", "slice1"]);
        assert_ok(&w.create("slice0", "ctr-1"), "create-container");

        // The interception library and the driver, in a read-only tmpfs.
        assert_eq!(fs::read(w.inside("/usr/lib/gpuslice/libgpuslice.so")).unwrap(), SHIM_CONTENT);
        let driver = w.inside("/usr/lib/gpuslice/driver");
        assert_eq!(
            fs::read_to_string(driver.join("libcuda.so.580.95.05")).unwrap(),
            "driver file libcuda.so.580.95.05"
        );
        assert_eq!(fs::read_link(driver.join("libcuda.so.1")).unwrap(), Path::new("libcuda.so.580.95.05"));
        assert_eq!(fs::read_link(driver.join("libcuda.so")).unwrap(), Path::new("libcuda.so.1"));
        assert_eq!(
            fs::read_to_string(driver.join("libnvidia-ml.so.1")).unwrap(),
            "driver file libnvidia-ml.so.580.95.05"
        );
        let lib_dir = mounts_under(&w.inside("/usr/lib/gpuslice"));
        let tmpfs = lib_dir.iter().find(|m| m.path == w.inside("/usr/lib/gpuslice")).unwrap();
        assert_eq!(tmpfs.fstype, "tmpfs");
        assert!(lib_dir.iter().all(|m| m.read_only()), "{lib_dir:#?}");
        assert_read_only(&driver.join("libcuda.so.580.95.05"));
        assert!(fs::write(driver.join("new"), "x").is_err());
        assert_eq!(fs::read_to_string(w.inside("/usr/bin/nvidia-smi")).unwrap(), "driver tool nvidia-smi");

        // The loader: the shim first in a read-only preload list that keeps the image's entry,
        // and a cache that names the driver's libraries where the container sees them.
        let preload = w.inside("/etc/ld.so.preload");
        assert_eq!(fs::read_to_string(&preload).unwrap(), format!("/usr/lib/gpuslice/libgpuslice.so\n{IMAGE_PRELOAD}"));
        assert_read_only(&preload);
        let cache = parse_ld_cache(&fs::read(w.inside("/etc/ld.so.cache")).unwrap()).unwrap();
        let entry = |name: &str| cache.iter().find(|e| e.name == name).map(|e| e.path.clone());
        assert_eq!(entry("libcuda.so.1"), Some(PathBuf::from("/usr/lib/gpuslice/driver/libcuda.so.1")));
        assert_eq!(entry("libnvidia-ml.so.1"), Some(PathBuf::from("/usr/lib/gpuslice/driver/libnvidia-ml.so.1")));
        assert_eq!(entry("libimage.so.1"), Some(PathBuf::from("/opt/image/lib/libimage.so.1")));
        assert_eq!(cache.iter().filter(|e| e.name == "libcuda.so.1").count(), 1, "{cache:#?}");

        // The slice state, in a read-only tmpfs of the hook's whose source says so: limits
        // read-only, the region and the board the host's device nodes, writable.
        let state_mount = mounts_under(&w.inside("/run/gpuslice"));
        let tmpfs = state_mount.iter().find(|m| m.path == w.inside("/run/gpuslice")).unwrap();
        assert_eq!((tmpfs.fstype.as_str(), tmpfs.source.as_str()), ("tmpfs", "gpuslice"));
        assert!(tmpfs.read_only(), "{tmpfs:?}");
        assert!(fs::create_dir(w.inside("/run/gpuslice/slices/forged")).is_err(), "nothing can be added");
        let moved = fs::rename(w.inside("/run/gpuslice"), w.inside("/run/moved")).unwrap_err();
        assert_eq!(moved.raw_os_error(), Some(libc::EBUSY), "a mount point cannot be renamed: {moved}");
        let slice = w.inside("/run/gpuslice/slices/slice0");
        let host_limits = fs::read_to_string(w.state.join("slices/slice0/limits")).unwrap();
        assert!(host_limits.contains("memory_bytes=4294967296"), "{host_limits}");
        assert_eq!(fs::read_to_string(slice.join("limits")).unwrap(), host_limits);
        assert_read_only(&slice.join("limits"));
        let region = fs::OpenOptions::new().read(true).write(true).open(slice.join("region")).unwrap();
        assert!(region.metadata().unwrap().file_type().is_block_device());
        assert!(region.set_len(0).is_err(), "the region cannot be truncated");
        assert_eq!(w.attached("slice0"), ["ctr-1"]);
        // The GPU's board, writable, with the slice's record.
        let board = w.inside(&format!("/run/gpuslice/gpus/{UUID0}/board"));
        fs::OpenOptions::new().read(true).write(true).open(&board).unwrap();
        let names: Vec<String> =
            gpuslice_core::board::Board::open(&board).unwrap().slices().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["slice0", "slice1"]);

        // A second slice in the same container: only its own state is added, in the same
        // tmpfs, read-only again afterwards.
        let before = mounts_under(&w.rootfs).len();
        assert_ok(&w.create("slice1", "ctr-1"), "create-container for a second slice");
        assert_eq!(mounts_under(&w.rootfs).len(), before + 2, "{:#?}", mounts_under(&w.rootfs));
        assert!(fs::metadata(w.inside("/run/gpuslice/slices/slice1/region")).unwrap().file_type().is_block_device());
        assert!(
            mounts_under(&w.inside("/run/gpuslice"))
                .iter()
                .find(|m| m.path == w.inside("/run/gpuslice"))
                .unwrap()
                .read_only()
        );
        assert_eq!(fs::read_to_string(&preload).unwrap().matches("libgpuslice.so").count(), 1);
        // The same slice again (a device listed twice): nothing new.
        assert_ok(&w.create("slice0", "ctr-1"), "create-container again");
        assert_eq!(mounts_under(&w.rootfs).len(), before + 2);
        assert_eq!(w.attached("slice0"), ["ctr-1"]);

        // Nothing was left in the scratch directory.
        let scratch: Vec<_> = fs::read_dir(w.state.join("tmp")).unwrap().collect();
        assert!(scratch.is_empty(), "{scratch:?}");

        // The host guard's record of the container, per slice: its first process's cgroups as
        // the kernel lists them, and its name from the annotations; host-only.
        let record = w.record("ctr-1", "slice0").expect("a record for slice0");
        let pid = std::process::id();
        assert_eq!((record.pid, record.name.as_deref(), record.pod.as_deref()), (pid, Some("trainer"), None));
        assert_eq!(record.cgroups, containers::read_cgroups(Path::new("/proc"), pid).unwrap());
        assert!(w.record("ctr-1", "slice1").is_some());
        let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).unwrap().permissions()) & 0o777;
        assert_eq!(mode(&containers::host_dir(&w.state)), 0o700);
        assert!(!mounts_under(&w.rootfs).iter().any(|m| m.path.ends_with("host")), "the records are never mounted");
        // The container's /run/gpuslice holds only the slices' and the GPUs' state.
        let mut seen: Vec<_> =
            fs::read_dir(w.inside("/run/gpuslice")).unwrap().map(|e| e.unwrap().file_name()).collect();
        seen.sort();
        assert_eq!(seen, ["gpus", "slices"], "the container's state tmpfs");
        assert!(w.state.join("host/containers/ctr-1").is_dir());

        // poststop: the container leaves the region, its dead processes' memory is freed, its
        // record goes.
        let poststop =
            w.hook("poststop", &w.slice_args("slice0"), &w.state_json("ctr-1").replace("creating", "stopped"));
        assert_ok(&poststop, "poststop");
        assert!(w.attached("slice0").is_empty());
        assert_eq!(w.attached("slice1"), ["ctr-1"]);
        assert!(w.record("ctr-1", "slice0").is_none());
        assert!(w.record("ctr-1", "slice1").is_some(), "the other slice's record stays");
    });
}

#[test]
fn missing_state_is_refused_until_generate_makes_it() {
    in_mount_namespace("missing_state_is_refused_until_generate_makes_it", || {
        let w = World::new();
        assert!(!w.state.exists());
        let line = assert_refused(&w.create("slice0", "ctr-1"), "create-container after a reboot, before generate");
        assert!(line.contains("region\" is missing; run gpuslice-cdi generate"), "{line}");
        assert!(mounts_under(&w.base).is_empty());
        w.generate(&["slice0"]);
        assert_ok(&w.create("slice0", "ctr-1"), "create-container after generate");
        assert_eq!(w.attached("slice0"), ["ctr-1"]);
        // A hand-written bundle may name the slice alone; the state is there.
        let bare = vec!["--slice".into(), "slice0".into(), format!("--state-dir={}", w.state.display())];
        let mut args = bare.clone();
        args.push(format!("--driver-root={}", w.driver.display()));
        args.push(format!("--shim-path={}", w.shim.display()));
        assert_ok(&w.hook("create-container", &args, &w.state_json("ctr-2")), "create-container with --slice only");
        assert_eq!(w.attached("slice0"), ["ctr-1", "ctr-2"]);
    });
}

/// A process on the slice that keeps the region's lock: the next container's start is refused
/// after a bounded wait with one line, and poststop does not wait at all for long.
#[test]
fn a_held_region_lock_fails_the_start_and_never_blocks_poststop() {
    in_mount_namespace("a_held_region_lock_fails_the_start_and_never_blocks_poststop", || {
        let w = World::new();
        w.generate(&["slice0"]);
        assert_ok(&w.create("slice0", "ctr-1"), "create-container");
        let squatter =
            fs::OpenOptions::new().read(true).write(true).open(w.state.join("slices/slice0/region")).unwrap();
        let _held = gpuslice_core::shm::lock::lock(&squatter, 0..1).unwrap();
        let start = Instant::now();
        let line = assert_refused(&w.create("slice0", "ctr-2"), "create-container with the lock held");
        assert!(line.contains("its lock stayed held by another process"), "{line}");
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
        assert!(w.record("ctr-1", "slice0").is_some());
        assert!(w.record("ctr-2", "slice0").is_none(), "a refused container leaves no host record");
        let start = Instant::now();
        let out = w.hook("poststop", &w.slice_args("slice0"), &w.state_json("ctr-1").replace("creating", "stopped"));
        assert!(start.elapsed() < Duration::from_secs(2), "poststop waited {:?}", start.elapsed());
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("left for the next reclaim"), "{stderr}");
        drop(_held);
        assert_eq!(w.attached("slice0"), ["ctr-1"], "left as it was");
        // The host record goes all the same: the guard must not keep tying processes to a
        // container that is gone.
        assert!(w.record("ctr-1", "slice0").is_none(), "the host record outlived poststop");
    });
}

#[test]
fn mode_none_gets_the_driver_without_the_shim() {
    in_mount_namespace("mode_none_gets_the_driver_without_the_shim", || {
        let w = World::new();
        let args: Vec<String> = w
            .slice_args("gpu0")
            .into_iter()
            .map(|a| if a == "--mode=shim" { "--mode=none".to_owned() } else { a })
            .collect();
        assert_ok(&w.hook("create-container", &args, &w.state_json("ctr-1")), "create-container, mode none");
        assert!(w.inside("/usr/lib/gpuslice/driver/libcuda.so.1").is_file());
        assert_eq!(fs::read_to_string(w.inside("/etc/ld.so.preload")).unwrap(), IMAGE_PRELOAD);
        assert!(w.inside("/run/gpuslice/slices/gpu0/limits").is_file());
        assert!(!w.inside("/run/gpuslice/slices/gpu0/region").exists());
    });
}

/// The image plants links to a host directory; after the hook, that directory is exactly as
/// it was, whether the hook succeeded (the links resolved inside the rootfs) or refused.
#[test]
fn hostile_images_write_nothing_on_the_host() {
    in_mount_namespace("hostile_images_write_nothing_on_the_host", || {
        type LinkTarget = fn(&Path) -> PathBuf;
        let attacks: [(&str, LinkTarget); 8] = [
            ("/etc", |v| v.to_owned()),
            ("/etc/ld.so.preload", |v| v.join("ld.so.preload")),
            ("/etc/ld.so.cache", |v| v.join("ld.so.cache")),
            ("/usr/lib/gpuslice", |v| v.to_owned()),
            ("/usr/lib/gpuslice", |v| Path::new("/proc/self/root").join(v.strip_prefix("/").unwrap())),
            ("/run", |v| v.to_owned()),
            ("/usr/bin", |v| v.to_owned()),
            ("/usr", |v| v.join("usr")),
        ];
        for (path, target) in attacks {
            let w = World::new();
            w.generate(&["slice0"]);
            let victim = w.base.join("victim");
            fs::create_dir_all(victim.join("usr/lib")).unwrap();
            fs::write(victim.join("ld.so.preload"), "/host/only.so\n").unwrap();
            fs::write(victim.join("ld.so.cache"), "host cache").unwrap();
            fs::write(victim.join("nvidia-smi"), "host file").unwrap();
            let before = snapshot(&victim);
            let planted = w.inside(path);
            if planted.is_dir() {
                fs::remove_dir_all(&planted).unwrap();
            } else if planted.exists() {
                fs::remove_file(&planted).unwrap();
            }
            fs::create_dir_all(planted.parent().unwrap()).unwrap();
            symlink(target(&victim), &planted).unwrap();

            let out = w.create("slice0", "ctr-1");
            assert_eq!(snapshot(&victim), before, "{path} -> {}: {out:?}", target(&victim).display());
            let mounts = mounts_under(&victim);
            assert!(mounts.is_empty(), "{path}: mounted on the host: {mounts:#?}");
            // Every link resolved inside the rootfs (which has no procfs here, so even the
            // /proc/self/root one is a plain link): the container gets its slice all the same.
            // With a procfs mounted, as engines have it, that one is refused (tests/e2e).
            assert_ok(&out, path);
            assert!(mounts_under(&w.rootfs).len() >= 8, "{path}: {:#?}", mounts_under(&w.rootfs));
        }
    });
}

/// Every refusal: status 1, one line naming what to do, nothing mounted, nothing recorded.
#[test]
fn failures_are_one_line_and_leave_nothing_behind() {
    in_mount_namespace("failures_are_one_line_and_leave_nothing_behind", || {
        type Setup = fn(&World) -> (Vec<String>, String);
        let cases: Vec<(&str, Setup, &str)> = vec![
            ("no generate", |w| (w.slice_args("slice0"), w.state_json("c")), "missing; run gpuslice-cdi generate"),
            (
                "an older release's region",
                |w| {
                    let region = w.state.join("slices/slice0/region");
                    gpuslice_core::state::remove_devices(&w.state);
                    fs::remove_file(&region).unwrap();
                    Region::create(&region).unwrap();
                    (w.slice_args("slice0"), w.state_json("c"))
                },
                "is not a device",
            ),
            (
                "unknown slice",
                |w| {
                    (
                        vec!["--slice".into(), "slice9".into(), format!("--state-dir={}", w.state.display())],
                        w.state_json("c"),
                    )
                },
                "unknown slice slice9",
            ),
            ("no state", |w| (w.slice_args("slice0"), String::new()), "no container state on standard input"),
            ("malformed state", |w| (w.slice_args("slice0"), "{\"id\":".into()), "not OCI state JSON"),
            (
                "state without a bundle",
                |w| (w.slice_args("slice0"), r#"{"id":"c","status":"creating"}"#.into()),
                "has no bundle",
            ),
            (
                "state without a pid",
                |w| {
                    (w.slice_args("slice0"), w.state_json("c").replace(&format!("\"pid\":{},", std::process::id()), ""))
                },
                "has no pid",
            ),
            (
                "a pid that is no process",
                |w| {
                    (
                        w.slice_args("slice0"),
                        w.state_json("c").replace(&format!("\"pid\":{},", std::process::id()), "\"pid\":2147483646,"),
                    )
                },
                "reading the cgroups of the container's process 2147483646",
            ),
            (
                "missing bundle",
                |w| (w.slice_args("slice0"), w.state_json("c").replace("/bundle", "/gone")),
                "config.json",
            ),
            (
                "GPU gone",
                |w| {
                    let args =
                        w.slice_args("slice0").into_iter().map(|a| a.replace("-0000-4e2a", "-0009-4e2a")).collect();
                    (args, w.state_json("c"))
                },
                "which is not present on this node",
            ),
            (
                "no driver",
                |w| {
                    fs::remove_file(w.driver.join("etc/ld.so.cache")).unwrap();
                    (w.slice_args("slice0"), w.state_json("c"))
                },
                "no usable NVIDIA driver",
            ),
            (
                "no shim",
                |w| {
                    fs::remove_file(&w.shim).unwrap();
                    (w.slice_args("slice0"), w.state_json("c"))
                },
                "interception library",
            ),
            (
                "preload is a directory",
                |w| {
                    fs::remove_file(w.inside("/etc/ld.so.preload")).unwrap();
                    fs::create_dir(w.inside("/etc/ld.so.preload")).unwrap();
                    (w.slice_args("slice0"), w.state_json("c"))
                },
                "ld.so.preload",
            ),
            (
                "bad limits",
                |w| {
                    let args = w
                        .slice_args("slice0")
                        .into_iter()
                        .map(|a| a.replace("cores-percent=50", "cores-percent=500"))
                        .collect();
                    (args, w.state_json("c"))
                },
                "cores_percent",
            ),
            (
                "bad priority",
                |w| {
                    let args = w
                        .slice_args("slice0")
                        .into_iter()
                        .map(|a| a.replace("priority=normal", "priority=urgent"))
                        .collect();
                    (args, w.state_json("c"))
                },
                "`priority` = `urgent`",
            ),
            (
                "a spec from before policies",
                |w| {
                    let args = w
                        .slice_args("slice0")
                        .into_iter()
                        .filter(|a| !a.starts_with("--cores-policy=") && !a.starts_with("--priority="))
                        .collect();
                    (args, w.state_json("c"))
                },
                "but not --cores-policy --priority; regenerate the spec",
            ),
        ];
        for (what, setup, expected) in cases {
            let w = World::new();
            if what != "no generate" {
                w.generate(&["slice0"]);
            }
            let (args, state) = setup(&w);
            let line = assert_refused(&w.hook("create-container", &args, &state), what);
            assert!(line.contains(expected), "{what}: {line}");
            let mounts = mounts_under(&w.base);
            assert!(mounts.is_empty(), "{what}: left mounted: {mounts:#?}");
            if let Ok(entries) = fs::read_dir(w.state.join("tmp")) {
                assert_eq!(entries.count(), 0, "{what}: scratch files left");
            }
            if w.state.join("slices/slice0/region").exists() {
                assert!(w.attached("slice0").is_empty(), "{what}: container recorded");
            }
            assert!(ContainerRecord::list(&w.state).0.is_empty(), "{what}: host record written");
            // Device files in the rootfs are never created by the hook.
            assert!(!fs::symlink_metadata(w.inside("/usr/lib/gpuslice")).is_ok_and(|m| m.file_type().is_char_device()));
        }
    });
}

#[test]
fn poststop_without_state_is_quiet() {
    let w = World::new();
    let out = w.hook("poststop", &w.slice_args("slice0"), &w.state_json("ctr-1"));
    assert_ok(&out, "poststop with no region");
    assert!(!w.state.exists(), "poststop must create nothing");
    assert_refused(&w.hook("poststop", &w.slice_args("slice0"), ""), "poststop without state");
}

/// A runtime may run the hook in the container's own cgroup namespace (a private one is the
/// default on cgroup v2), where the container's cgroup reads as `/`. The record must hold the
/// host's paths, which is what the host guard reads. Here the hook runs as the container's
/// first process would: moved into a cgroup of its own, then in a new cgroup namespace rooted
/// there.
#[test]
fn the_record_names_host_cgroups_from_a_private_cgroup_namespace() {
    let name = "the_record_names_host_cgroups_from_a_private_cgroup_namespace";
    if gpuslice_test_support::skip_unless_program(name, "unshare") {
        return;
    }
    in_mount_namespace(name, || {
        let w = World::new();
        w.generate(&["slice0"]);
        // A cgroup of the test's own, in the v1 freezer hierarchy or the v2 one.
        let parent = ["/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| {
                p.join("cgroup.procs").is_file()
                    && fs::create_dir(p.join(format!("gpuslice-test-{}", std::process::id()))).is_ok()
            });
        let Some(parent) = parent else {
            gpuslice_test_support::skip(name, "no writable cgroup hierarchy");
            return;
        };
        let cgroup = parent.join(format!("gpuslice-test-{}", std::process::id()));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec unshare --cgroup \"$@\"")
            .arg(&cgroup)
            .arg(HOOK)
            .arg("create-container")
            .args(w.slice_args("slice0"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let state =
            w.state_json("ctr-ns").replace(&format!("\"pid\":{}", std::process::id()), &format!("\"pid\":{pid}"));
        let _ = child.stdin.take().unwrap().write_all(state.as_bytes());
        let out = child.wait_with_output().unwrap();
        let _ = fs::remove_dir(&cgroup);
        if fs::metadata("/proc/1/ns/cgroup").is_err() {
            // A host where PID 1 cannot be inspected: the hook cannot leave the namespace, sees
            // only `/`, and says so rather than write a record that ties nothing.
            let line = assert_refused(&out, "create-container in a cgroup namespace it cannot leave");
            assert!(line.contains("reads as /"), "{line}");
            assert!(w.record("ctr-ns", "slice0").is_none());
            return;
        }
        assert_ok(&out, "create-container in a private cgroup namespace");
        let record = w.record("ctr-ns", "slice0").expect("a record");
        let want = format!("/gpuslice-test-{}", std::process::id());
        assert!(record.cgroups.iter().any(|c| c.path == want), "{:?} has no {want}", record.cgroups);
    });
}

/// runc and crun run `createContainer` hooks as children of the container's first process,
/// inside its PID namespace, with `"pid": 1` in the state: the container's own number for it.
/// The record must hold the host's PID and that process's cgroups.
#[test]
fn the_record_finds_the_container_process_from_inside_its_pid_namespace() {
    let name = "the_record_finds_the_container_process_from_inside_its_pid_namespace";
    if gpuslice_test_support::skip_unless_program(name, "unshare") {
        return;
    }
    in_mount_namespace(name, || {
        let w = World::new();
        w.generate(&["slice0"]);
        let parent = ["/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| {
                p.join("cgroup.procs").is_file()
                    && fs::create_dir(p.join(format!("gpuslice-pidns-{}", std::process::id()))).is_ok()
            });
        let Some(parent) = parent else {
            gpuslice_test_support::skip(name, "no writable cgroup hierarchy");
            return;
        };
        let cgroup = parent.join(format!("gpuslice-pidns-{}", std::process::id()));
        // The container's first process: PID 1 of a new namespace, in its cgroup, running the
        // hook as its child with the state on the hook's standard input.
        let mut child = Command::new("unshare")
            .args(["--pid", "--fork", "sh", "-c", "echo $$ > \"$0/cgroup.procs\" && \"$@\"; echo hook-status=$?"])
            .arg(&cgroup)
            .arg(HOOK)
            .arg("create-container")
            .args(w.slice_args("slice0"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let state = w.state_json("ctr-pidns").replace(&format!("\"pid\":{}", std::process::id()), "\"pid\":1");
        let _ = child.stdin.take().unwrap().write_all(state.as_bytes());
        let unshare = child.id();
        // The shell's host PID, while it runs (it waits for the hook).
        let children = fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap_or_default();
        let out = child.wait_with_output().unwrap();
        let _ = fs::remove_dir(&cgroup);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("hook-status=0"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let record = w.record("ctr-pidns", "slice0").expect("a record");
        assert_ne!(record.pid, 1, "the container's own number, not the host's");
        if let Some(shell) = children.split_whitespace().next() {
            assert_eq!(record.pid.to_string(), shell);
        }
        let want = format!("/gpuslice-pidns-{}", std::process::id());
        assert!(record.cgroups.iter().any(|c| c.path == want), "{:?} has no {want}", record.cgroups);
    });
}
