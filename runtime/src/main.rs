//! `gpuslice-runtime`: a drop-in for runc that gives containers the gpuslice slices they ask
//! for; see `lib.rs` for what it does.
//!
//! `gpuslice-runtime [--gpuslice-config=PATH] <runc arguments…>`: runs the real runtime
//! with the runc arguments, after editing the bundle on `create` and `run`.
//! `gpuslice-runtime precreate-hook [--gpuslice-config=PATH]`: podman's `precreate` OCI hook.

use std::ffi::OsString;
use std::process::ExitCode;

/// The argument that selects the hooks-directory mode.
const PRECREATE: &str = "precreate-hook";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == PRECREATE) {
        let result =
            gpuslice_runtime::precreate_args(&args[1..]).map_err(gpuslice_runtime::Error::from).and_then(|config| {
                gpuslice_runtime::precreate(config.as_deref(), std::io::stdin().lock(), std::io::stdout().lock())
            });
        return match result {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gpuslice-runtime: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let inv = match gpuslice_runtime::args::parse(args) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("gpuslice-runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let e = gpuslice_runtime::run(&inv);
    let message = format!("gpuslice-runtime: {e}");
    gpuslice_runtime::log_error(&inv, &message);
    eprintln!("{message}");
    ExitCode::FAILURE
}
