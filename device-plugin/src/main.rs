//! `gpuslice-device-plugin`: argument parsing over the library; see `lib.rs` for what it does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Advertise this node's GPU slices to the kubelet and hand them to pods as CDI devices.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Node configuration (its [kubernetes] table, spec_dir and state_dir).
    #[arg(long, default_value = gpuslice_core::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// NVML library to load instead of libnvidia-ml.so.1.
    #[arg(long, env = "GPUSLICE_NVML_LIB")]
    nvml_lib: Option<PathBuf>,
    /// The kubelet's device plugin directory, instead of the config's.
    #[arg(long)]
    device_plugin_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = (cli.config, cli.nvml_lib, cli.device_plugin_dir);
    ExitCode::SUCCESS
}
