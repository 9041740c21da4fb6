//! A guest in someone else's process: preloaded into everything in a container, the shim must
//! change nothing for programs that do not use CUDA.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn cc(dir: &Path, name: &str, source: &str, args: &[&str]) -> Option<std::path::PathBuf> {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    match Command::new("cc").arg(&src).arg("-o").arg(&out).args(args).status() {
        Ok(s) if s.success() => Some(out),
        _ => None,
    }
}

/// The JVM's libjsig and sanitizers interpose a libc function and find the original with
/// `dlsym(RTLD_NEXT, …)`. glibc resolves "next" relative to the caller, so a `dlsym` that
/// forwards from its own frame hands such a library its own function: infinite recursion.
#[test]
fn an_rtld_next_interposer_still_finds_the_next_definition() {
    let dir = tempfile::tempdir().unwrap();
    let Some(lib) = cc(
        dir.path(),
        "libnext.so",
        r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>
static int depth;
pid_t getppid(void) {
    pid_t (*next)(void) = (pid_t (*)(void))dlsym(RTLD_NEXT, "getppid");
    if (!next || next == getppid || ++depth > 1) return -1;
    pid_t p = next();
    depth--;
    return p;
}
"#,
        &["-shared", "-fPIC", "-ldl"],
    ) else {
        gpuslice_test_support::skip("an_rtld_next_interposer_still_finds_the_next_definition", "no C compiler");
        return;
    };
    let prog = cc(
        dir.path(),
        "ppid",
        "#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf(\"%d\\n\", (int)getppid()); return 0; }\n",
        &[],
    )
    .unwrap();
    let run = |preload: String| {
        let out = Command::new(&prog).env("LD_PRELOAD", preload).output().unwrap();
        assert!(out.status.success(), "{:?}", out);
        String::from_utf8_lossy(&out.stdout).trim().parse::<i32>().unwrap()
    };
    let alone = run(lib.display().to_string());
    assert!(alone > 0, "the interposer works on its own");
    let with_shim = run(format!("{}:{}", shim().display(), lib.display()));
    assert_eq!(with_shim, alone, "with the shim preloaded first, RTLD_NEXT must still reach libc");
}

#[test]
fn programs_without_cuda_run_unchanged_and_silently() {
    for (prog, args) in [("/bin/ls", &["/"][..]), ("/bin/sh", &["-c", "echo hi; exit 3"]), ("/usr/bin/env", &[])] {
        let bare = Command::new(prog).args(args).output().unwrap();
        let mut c = Command::new(prog);
        c.args(args).env("LD_PRELOAD", shim()).env("GPUSLICE_STATE_DIR", "/nonexistent");
        let with = c.output().unwrap();
        assert_eq!(bare.status.code(), with.status.code(), "{prog}");
        if prog != "/usr/bin/env" {
            assert_eq!(bare.stdout, with.stdout, "{prog}");
        }
        assert_eq!(with.stderr, bare.stderr, "{prog}: the shim printed something");
    }
}

#[test]
fn no_threads_and_no_umask_change_until_cuda_is_used() {
    // A shell preloaded with the shim reports one thread and the umask it was given.
    let mut c = Command::new("/bin/sh");
    c.args(["-c", "grep Threads /proc/self/status; umask"]).env("LD_PRELOAD", shim());
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Threads:\t1"), "{text}");
    let bare = Command::new("/bin/sh").args(["-c", "umask"]).output().unwrap();
    assert!(text.ends_with(&*String::from_utf8_lossy(&bare.stdout)), "{text}");
}

#[test]
fn no_constructor_runs_shim_code_at_load() {
    // The only initialisers are the Rust standard library's and the C runtime's; nothing of
    // ours runs before a CUDA or NVML function is called.
    let out = Command::new("readelf").args(["-W", "-S"]).arg(shim()).output();
    let Ok(out) = out else {
        gpuslice_test_support::skip("no_constructor_runs_shim_code_at_load", "readelf not found");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let init = text.lines().find(|l| l.contains(".init_array")).expect(".init_array");
    let size = init.split_whitespace().nth(5).and_then(|s| usize::from_str_radix(s, 16).ok()).unwrap();
    assert!(size <= 16, "more initialisers than std's and crt's: {init}");
}

/// `dlsym` of a name that merely starts like a driver function must not load the driver.
#[test]
fn looking_up_other_cu_names_loads_no_driver() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = cc(
        dir.path(),
        "lookup",
        r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
void curl_easy_init(void) {}
void cudaMalloc(void) {}
int main(void) {
    void *p = dlsym(RTLD_DEFAULT, "curl_easy_init");
    void *q = dlsym(RTLD_DEFAULT, "cudaMalloc");
    void *h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    printf("%d %d %d\n", p == (void *)curl_easy_init, q == (void *)cudaMalloc, h != 0);
    return 0;
}
"#,
        &["-ldl", "-rdynamic"],
    ) else {
        gpuslice_test_support::skip("looking_up_other_cu_names_loads_no_driver", "no C compiler");
        return;
    };
    let node = Node::new();
    let mut c = node.bare(&prog, &[]);
    c.env("LD_PRELOAD", shim());
    let out = c.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 1 0", "found as they are, and libcuda.so.1 not loaded");
}
