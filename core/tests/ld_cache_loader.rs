//! The host's own dynamic loader, in a scratch root, finds libraries through caches that
//! `compose_container_cache` writes: the proof that the sort matches glibc's binary search.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gpuslice_core::ld_cache::{
    CacheEntry, FLAG_X86_64, LibArch, compose_container_cache, parse_ld_cache, render_ld_cache,
};

/// The x86-64 glibc program interpreter.
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// Where the test library goes: a directory the loader never searches by itself.
const VENDOR_DIR: &str = "/opt/vendor/lib";

/// Opens each name given and prints `loaded <name> <path>` or `failed <name>: <error>`.
const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>

int main(int argc, char **argv) {
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        struct link_map *map = NULL;
        void *handle = dlopen(argv[i], RTLD_NOW | RTLD_LOCAL);
        if (handle == NULL || dlinfo(handle, RTLD_DI_LINKMAP, &map) != 0) {
            printf("failed %s: %s\n", argv[i], dlerror());
            failed = 1;
        } else {
            printf("loaded %s %s\n", argv[i], map->l_name);
        }
    }
    return failed;
}
"#;

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// `root` joined with `path`, an absolute path as seen inside `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|err| panic!("{cmd:?}: {err}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Copies the host file at `path` into `root` at the same path: the real file at its real
/// path, and `path` as a symlink to it when the host reaches it through links.
fn install_host_file(root: &Path, path: &Path) {
    let real = fs::canonicalize(path).unwrap();
    let copy = inside(root, &real);
    fs::create_dir_all(copy.parent().unwrap()).unwrap();
    fs::copy(&real, &copy).unwrap();
    let link = inside(root, path);
    if real != path && fs::symlink_metadata(&link).is_err() {
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(&real, &link).unwrap();
    }
}

/// The `(soname, path)` pairs the loader resolves for `program` on the host.
fn host_dependencies(program: &Path) -> Vec<(String, PathBuf)> {
    let out = run(Command::new(LOADER).arg("--list").arg(program));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().split_once(" => ")?;
            let path = rest.split(" (").next()?;
            Some((name.to_owned(), PathBuf::from(path)))
        })
        .collect()
}

/// A root with the host's loader, the program at `/prog` and what it links against.
struct Scratch {
    dir: tempfile::TempDir,
    chroot: PathBuf,
    /// The program's libraries: `libc.so.6` and whatever else the host links in.
    system: Vec<(String, PathBuf)>,
}

impl Scratch {
    fn new(cc: &Path, chroot: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("prog.c");
        fs::write(&src, PROGRAM).unwrap();
        let program = dir.path().join("prog");
        // -ldl for glibc before 2.34, where dlopen lives in libdl.
        run(Command::new(cc).arg("-o").arg(&program).arg(&src).arg("-ldl"));
        let system = host_dependencies(&program);
        assert!(system.iter().any(|(name, _)| name == "libc.so.6"), "{system:?}");
        install_host_file(dir.path(), Path::new(LOADER));
        for (_, path) in &system {
            install_host_file(dir.path(), path);
        }
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        Scratch { dir, chroot, system }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `/prog names…` under `cache`; the exit status and the `loaded`/`failed` lines by name.
    fn dlopen(&self, cache: &[u8], names: &[&str]) -> (bool, HashMap<String, String>) {
        fs::write(self.root().join("etc/ld.so.cache"), cache).unwrap();
        let out = Command::new(&self.chroot).env_clear().arg(self.root()).arg("/prog").args(names).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let results: HashMap<String, String> = stdout
            .lines()
            .filter_map(|line| {
                let (verdict, rest) = line.split_once(' ')?;
                let (name, detail) = rest.split_once([' ', ':'])?;
                Some((name.to_owned(), format!("{verdict} {}", detail.trim())))
            })
            .collect();
        assert_eq!(
            results.len(),
            names.len(),
            "the program did not report every name: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), results)
    }
}

/// Builds a library with soname `soname` at `path` inside `root`.
fn build_library(cc: &Path, root: &Path, soname: &str, path: &Path) {
    let src = root.join("lib.c");
    fs::write(&src, "int gpuslice_test_symbol(void) { return 42; }\n").unwrap();
    let out = inside(root, path);
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    run(Command::new(cc)
        .args(["-shared", "-fPIC", "-nostdlib"])
        .arg(format!("-Wl,-soname,{soname}"))
        .arg("-o")
        .arg(out)
        .arg(&src));
}

/// Names that exercise every rule of the order: digit runs of different lengths, digits
/// against letters and dots, capitals.
fn generated_names() -> Vec<String> {
    (0..200)
        .map(|i| match i % 4 {
            0 => format!("libgen{i}.so.{}", i % 7),
            1 => format!("libgen{i}x.so"),
            2 => format!("libgen.{i}.so.1"),
            _ => format!("libGen{i}.so.{i}"),
        })
        .collect()
}

fn setup() -> Option<(PathBuf, PathBuf)> {
    use gpuslice_test_support::skip;
    const TEST: &str = "the real loader's tests";
    if gpuslice_test_support::skip_unless_root(TEST, "chroot") {
        return None;
    }
    if !Path::new(LOADER).exists() {
        skip(TEST, &format!("{LOADER} does not exist; not an x86-64 glibc host"));
        return None;
    }
    let Some(cc) = tool("cc") else {
        skip(TEST, "no C compiler");
        return None;
    };
    let Some(chroot) = tool("chroot") else {
        skip(TEST, "no chroot");
        return None;
    };
    Some((cc, chroot))
}

#[test]
fn the_loader_finds_a_library_only_through_the_composed_cache() {
    let Some((cc, chroot)) = setup() else { return };
    let scratch = Scratch::new(&cc, chroot);
    let lib = Path::new(VENDOR_DIR).join("libgsltest.so.1.2.3");
    build_library(&cc, scratch.root(), "libgsltest.so.1", &lib);

    let mut added = scratch.system.clone();
    let without = compose_container_cache(None, &added);
    added.push(("libgsltest.so.1".to_owned(), lib.clone()));
    let with = compose_container_cache(None, &added);
    assert_eq!((&without.image_error, &with.image_error), (&None, &None));

    let (ok, results) = scratch.dlopen(&with.bytes, &["libgsltest.so.1"]);
    assert_eq!(results["libgsltest.so.1"], format!("loaded {}", lib.display()));
    assert!(ok);

    // The program runs (libc is in the loader's default directories) but cannot find the library.
    let (ok, results) = scratch.dlopen(&without.bytes, &["libgsltest.so.1"]);
    assert!(results["libgsltest.so.1"].starts_with("failed"), "{results:?}");
    assert!(!ok);
}

#[test]
fn the_loader_finds_every_entry_of_a_large_cache() {
    let Some((cc, chroot)) = setup() else { return };
    let scratch = Scratch::new(&cc, chroot);
    let first = Path::new(VENDOR_DIR).join("libgsltest.so.1.2.3");
    build_library(&cc, scratch.root(), "libgsltest.so.1", &first);

    // One copy per name: the loader takes a file it has loaded already for the same object,
    // whatever name led to it, and would report the first path.
    let names = generated_names();
    let mut added = scratch.system.clone();
    for name in &names {
        let path = Path::new(VENDOR_DIR).join("gen").join(name);
        fs::create_dir_all(inside(scratch.root(), path.parent().unwrap())).unwrap();
        fs::copy(inside(scratch.root(), &first), inside(scratch.root(), &path)).unwrap();
        added.push((name.clone(), path));
    }

    // The image: the host's own cache when it has one, and entries of the same names for other
    // architectures, which the loader must step over.
    let mut image = fs::read("/etc/ld.so.cache").ok().and_then(|b| parse_ld_cache(&b).ok()).unwrap_or_default();
    println!("image cache: {} entries from the host", image.len());
    for (flags, name) in [(0x0803, &names[10]), (0x0003, &names[10]), (0x0003, &names[101])] {
        image.push(CacheEntry {
            name: name.clone(),
            path: PathBuf::from("/nonexistent").join(name),
            flags,
            arch: LibArch::Other(flags),
            osversion: 0,
            hwcap: 0,
        });
    }
    // A stale x86-64 entry for a name the driver provides: replaced.
    image.push(CacheEntry {
        name: names[150].clone(),
        path: PathBuf::from("/nonexistent/stale").join(&names[150]),
        flags: FLAG_X86_64,
        arch: LibArch::X86_64,
        osversion: 0,
        hwcap: 0,
    });
    let composed = compose_container_cache(Some(&render_ld_cache(&image)), &added);
    assert_eq!(composed.image_error, None);

    let wanted: Vec<&str> = names.iter().map(String::as_str).collect();
    let (ok, results) = scratch.dlopen(&composed.bytes, &wanted);
    for name in &names {
        let path = Path::new(VENDOR_DIR).join("gen").join(name);
        assert_eq!(results[name], format!("loaded {}", path.display()), "{name}");
    }
    assert!(ok);

    // The same entries in ascending order: the binary search goes the wrong way and misses.
    let mut ascending = composed.bytes.clone();
    let nlibs = u32::from_le_bytes(ascending[20..24].try_into().unwrap()) as usize;
    let table = 48..48 + nlibs * 24;
    let records: Vec<Vec<u8>> = ascending[table.clone()].chunks_exact(24).rev().map(<[u8]>::to_vec).collect();
    ascending.splice(table, records.concat());
    let (ok, results) = scratch.dlopen(&ascending, &wanted);
    let missed = results.values().filter(|r| r.starts_with("failed")).count();
    assert!(missed > names.len() / 2, "only {missed} of {} missed in ascending order", names.len());
    assert!(!ok);
}
