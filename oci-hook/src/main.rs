//! `gpuslice-hook`: argument parsing over the library; see `lib.rs` for what it does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use gpuslice_hook::slice::{DEFAULT_STATE_DIR, SliceArgs};
use gpuslice_hook::{HookArgs, Poststop};

/// The OCI hook of gpuslice's CDI devices. Container runtimes run it with the container's
/// state on standard input; the CDI spec written by gpuslice-cdi gives it its arguments.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// createContainer: mount the driver, the interception library and the slice into the
    /// container's rootfs, and record the container in the slice's region.
    CreateContainer(Slice),
    /// poststop: remove the container from the slice's region and free what it held.
    Poststop(Slice),
}

#[derive(Debug, Args)]
struct Slice {
    /// The slice (the CDI device name).
    #[arg(long)]
    slice: String,
    /// Host directory of slice state.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The slice's mode (shim or none); with the six below, recreates missing state.
    #[arg(long)]
    mode: Option<String>,
    /// UUID of the slice's GPU.
    #[arg(long)]
    gpu_uuid: Option<String>,
    /// NVML index of the slice's GPU.
    #[arg(long)]
    gpu_index: Option<u32>,
    /// Device memory of the slice, in bytes.
    #[arg(long)]
    memory_bytes: Option<u64>,
    /// Compute share of the slice, in percent.
    #[arg(long)]
    cores_percent: Option<u32>,
    /// What the compute share is: cap (a hard cap) or borrow (a share that may use idle compute).
    #[arg(long)]
    cores_policy: Option<String>,
    /// The slice's priority on its GPU: normal or high.
    #[arg(long)]
    priority: Option<String>,
    /// Root under which the NVIDIA driver's files are found.
    #[arg(long, default_value = "/")]
    driver_root: PathBuf,
    /// The interception library on the host.
    #[arg(long, default_value = "/usr/lib/gpuslice/libgpuslice.so")]
    shim_path: PathBuf,
}

impl From<Slice> for HookArgs {
    fn from(s: Slice) -> Self {
        HookArgs {
            slice: SliceArgs {
                name: s.slice,
                state_dir: s.state_dir,
                mode: s.mode,
                gpu_uuid: s.gpu_uuid,
                gpu_index: s.gpu_index,
                memory_bytes: s.memory_bytes,
                cores_percent: s.cores_percent,
                cores_policy: s.cores_policy,
                priority: s.priority,
            },
            driver_root: s.driver_root,
            shim_path: s.shim_path,
        }
    }
}

fn main() -> ExitCode {
    let stdin = std::io::stdin().lock();
    let result = match Cli::parse().command {
        Command::CreateContainer(slice) => gpuslice_hook::create_container(&slice.into(), stdin),
        Command::Poststop(slice) => gpuslice_hook::poststop(&slice.into(), stdin).map(|done| {
            if let Poststop::Deferred(line) = done {
                eprintln!("gpuslice-hook: {line}");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpuslice-hook: {e:#}");
            // The engine shows the line to whoever started the container; the host's log keeps
            // it for the operator (best effort).
            let who = gpuslice_hook::CONTAINER_ID
                .get()
                .map_or_else(String::new, |id| format!("container {id} not started: "));
            let _ = gpuslice_hook::syslog::error(
                std::path::Path::new(gpuslice_hook::syslog::DEV_LOG),
                &format!("{who}{e:#}"),
            );
            ExitCode::FAILURE
        }
    }
}
