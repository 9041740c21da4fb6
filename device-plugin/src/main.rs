//! `gpuslice-device-plugin`: argument parsing over the library; see `lib.rs` for what it does.

mod observability;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use gpuslice_device_plugin::inventory::{NvmlProbe, Scanner};
use gpuslice_device_plugin::run::Plugin;

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
    /// Root under which /dev/nvidia* are looked up.
    #[arg(long, default_value = "/")]
    dev_root: PathBuf,
    /// The kubelet's device plugin directory, instead of the config's
    /// [kubernetes] device_plugin_dir.
    #[arg(long)]
    device_plugin_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    observability::init("info");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpuslice-device-plugin: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = gpuslice_cdi::load_config(&cli.config)?;
    let dir = cli.device_plugin_dir.unwrap_or_else(|| config.kubernetes.device_plugin_dir.clone());
    let scanner = Scanner::new(config.clone(), Box::new(NvmlProbe::new(cli.nvml_lib, cli.dev_root)));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(Plugin { config, dir, scanner }.run())?;
    Ok(())
}
