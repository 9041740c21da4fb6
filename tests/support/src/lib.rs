//! How a test that cannot run here says so, shared by every test crate of the workspace.
//!
//! A test that cannot run prints `skipped: <test>: <reason>` and returns without asserting
//! anything, so it passes. That is right on a developer's machine without root or a C
//! compiler, and wrong in CI: there a skipped test would let a broken feature land. So when
//! [`NO_SKIP_ENV`] is `1` (`make test` sets it when it runs as root, which is how CI runs it),
//! a skip fails the test instead, naming what is missing.

use std::path::Path;

/// Set to `1` to turn every skip into a failure.
pub const NO_SKIP_ENV: &str = "GPUSLICE_NO_SKIP";

/// Whether skips are failures in this run.
pub fn strict() -> bool {
    std::env::var_os(NO_SKIP_ENV).is_some_and(|v| v == "1")
}

/// Says that `test` cannot run here because of `reason` and returns `true` (the caller then
/// returns); under [`NO_SKIP_ENV`]`=1` it fails the test instead.
#[track_caller]
pub fn skip(test: &str, reason: &str) -> bool {
    assert!(!strict(), "{test} cannot run here ({reason}), and {NO_SKIP_ENV}=1 says every test must run");
    println!("skipped: {test}: {reason}");
    true
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Skips `test` unless this runs as root; `why` says what needs root.
#[track_caller]
pub fn skip_unless_root(test: &str, why: &str) -> bool {
    !is_root() && skip(test, &format!("{why} needs root"))
}

/// Skips `test` unless the program `name` is found on `PATH` (or is a path that exists).
#[track_caller]
pub fn skip_unless_program(test: &str, name: &str) -> bool {
    !program_exists(name) && skip(test, &format!("{name} not found"))
}

/// Whether `name` runs from `PATH` or is an existing path.
pub fn program_exists(name: &str) -> bool {
    if name.contains('/') {
        return Path::new(name).exists();
    }
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// The C compiler the tests use: `$CC`, else `cc`, if it answers `--version`.
pub fn c_compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    std::process::Command::new(&cc).arg("--version").output().is_ok_and(|o| o.status.success()).then_some(cc)
}

/// Skips `test` unless a C compiler is there; `what` says what it would build.
#[track_caller]
pub fn skip_unless_cc(test: &str, what: &str) -> bool {
    c_compiler().is_none() && skip(test, &format!("no C compiler ($CC, else cc) to build {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_fails_in_strict_runs_and_passes_otherwise() {
        // Run in a child so this process's environment is not changed under other tests.
        if let Some(mode) = std::env::var_os("GPUSLICE_SUPPORT_TEST_CHILD") {
            let _ = skip("child", if mode == "strict" { "strict" } else { "lenient" });
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let run = |strict: &str| {
            std::process::Command::new(&exe)
                .args(["tests::a_skip_fails_in_strict_runs_and_passes_otherwise", "--exact", "--nocapture"])
                .env("GPUSLICE_SUPPORT_TEST_CHILD", if strict == "1" { "strict" } else { "lenient" })
                .env(NO_SKIP_ENV, strict)
                .output()
                .unwrap()
        };
        let lenient = run("0");
        assert!(lenient.status.success());
        assert!(String::from_utf8_lossy(&lenient.stdout).contains("skipped: child: lenient"));
        let strict = run("1");
        assert!(!strict.status.success(), "a skip under {NO_SKIP_ENV}=1 must fail");
        assert!(String::from_utf8_lossy(&strict.stderr).contains("cannot run here (strict)"));
    }

    #[test]
    fn programs_are_found_on_path() {
        assert!(program_exists("sh"));
        assert!(!program_exists("no-such-program-gpuslice"));
        assert!(program_exists("/bin/sh"));
    }
}
