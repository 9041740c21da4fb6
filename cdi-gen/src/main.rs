//! `gpuslice-cdi`: argument parsing over the library; see `lib.rs` for what it does.

mod observability;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use gpuslice_cdi::{Format, GenerateOptions, Sources};

/// Publish this node's GPU slices to container engines as a CDI spec.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Common {
    /// Node configuration.
    #[arg(long, default_value = gpuslice_core::config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// NVML library to load instead of libnvidia-ml.so.1.
    #[arg(long, env = "GPUSLICE_NVML_LIB")]
    nvml_lib: Option<PathBuf>,
    /// Root under which /dev/nvidia* are looked up.
    #[arg(long, default_value = "/")]
    dev_root: PathBuf,
}

impl Common {
    fn sources(self) -> Sources {
        Sources { config_path: self.config, nvml_lib: self.nvml_lib, dev_root: self.dev_root }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the CDI spec (default <spec_dir>/gpuslice.yaml) and each slice's limits file.
    Generate {
        #[command(flatten)]
        common: Common,
        /// Write the spec here instead; `-` for standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Spec format (default: json for *.json, yaml otherwise).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Write limits files under this directory instead of the config's state_dir.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Docker's daemon.json, whose Swarm resources (from `setup docker --swarm`) follow the slices.
        #[arg(long, default_value = "/etc/docker/daemon.json")]
        docker_config: PathBuf,
    },
    /// Print the slices the config makes of this node's GPUs.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Show what each slice holds now: memory in use, live processes, running containers.
    Status {
        /// Node configuration (for its state_dir).
        #[arg(long, default_value = gpuslice_core::config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Read slice state here instead of the config's state_dir.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live table of what each slice and container uses, from the guard's metrics (needs
    /// gpuslice-cdi daemon running with its metrics endpoint on).
    Top {
        /// Node configuration (for its [guard] metrics address).
        #[arg(long, default_value = gpuslice_core::config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The guard's metrics address (host:port), instead of the config's.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Seconds between frames.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Print one frame (two looks, one interval apart, for the rates) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Turn CDI on in a container engine's config (backs up the old file; idempotent).
    Setup {
        /// docker (daemon.json features.cdi), containerd (CRI enable_cdi), podman (nothing needed).
        #[arg(value_enum)]
        engine: gpuslice_cdi::setup::Engine,
        /// The engine's config file [default: /etc/docker/daemon.json, /etc/containerd/config.toml].
        #[arg(long)]
        file: Option<PathBuf>,
        /// Node configuration (its spec_dir is added to the engine's CDI directories).
        #[arg(long, default_value = gpuslice_core::config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print the change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Register gpuslice-runtime instead of turning CDI on (engines without CDI).
        #[arg(long)]
        runtime: bool,
        /// Docker Swarm: gpuslice-runtime as the default runtime, each slice a generic resource.
        #[arg(long, conflicts_with = "runtime")]
        swarm: bool,
        /// Where gpuslice-runtime is installed.
        #[arg(long, default_value = gpuslice_cdi::setup::runtime::DEFAULT_RUNTIME_BINARY)]
        runtime_path: PathBuf,
    },
    /// Check that a CDI spec file would load in a container engine.
    Validate {
        /// The spec file.
        file: PathBuf,
    },
    /// The host guard: check every slice against the driver's own per-process numbers, every
    /// [guard] interval, and kill, log or throttle by the config's [guard] policies.
    Daemon {
        /// Node configuration (its [guard] table and state_dir; read again when it changes).
        #[arg(long, default_value = gpuslice_core::config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// NVML library to load instead of libnvidia-ml.so.1.
        #[arg(long, env = "GPUSLICE_NVML_LIB")]
        nvml_lib: Option<PathBuf>,
        /// Read slice state and container records here instead of the config's state_dir.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Stop after this many passes (default: until SIGTERM or SIGINT).
        #[arg(long)]
        passes: Option<u64>,
        /// Print each pass (what it saw, what it did, its cost) as one JSON line.
        #[arg(long)]
        json: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (host:port), instead of the config's
        /// [guard] metrics (127.0.0.1:9403 by default); `off` for none.
        #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
        metrics: Option<MetricsAddr>,
    },
    /// MIG geometry: `mig apply` creates each [[gpu]] mig_layout through NVML.
    Mig {
        #[command(subcommand)]
        action: MigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum MigCommand {
    /// Make each [[gpu]] mig_layout the GPU's MIG instances (destroying unused ones that differ;
    /// never toggling MIG mode); then run generate to publish them.
    Apply {
        #[command(flatten)]
        common: Common,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `--metrics`: an address, or off.
#[derive(Debug, Clone, Copy)]
struct MetricsAddr(Option<std::net::SocketAddr>);

fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text == "off" {
        return Ok(MetricsAddr(None));
    }
    text.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|_| format!("{text:?} is not host:port with a numeric address (127.0.0.1:9403), or off"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    observability::init(if matches!(cli.command, Command::Daemon { .. }) { "info" } else { "warn" });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpuslice-cdi: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate { common, output, format, state_dir, docker_config } => {
            let g = gpuslice_cdi::generate(&common.sources(), &GenerateOptions { output, format, state_dir })?;
            for line in &g.warnings {
                eprintln!("gpuslice-cdi: {line}");
            }
            for note in &g.notes {
                eprintln!("gpuslice-cdi: {note}");
            }
            if g.spec_path.is_some() {
                match gpuslice_cdi::sync_swarm(&docker_config, &g.spec) {
                    Ok(Some(message)) => eprintln!("{message}"),
                    Ok(None) => {}
                    Err(e) => eprintln!("gpuslice-cdi: warning: keeping Swarm's resources in step: {e:#}"),
                }
            }
            if let Some(path) = g.spec_path {
                let names: Vec<&str> = g.spec.devices.iter().map(|d| d.name.as_str()).collect();
                eprintln!(
                    "wrote {} ({} devices of kind {}: {})",
                    path.display(),
                    names.len(),
                    g.spec.kind,
                    names.join(", ")
                );
            }
            Ok(())
        }
        Command::List { common } => {
            let (_, _, plan) = gpuslice_cdi::load_plan(&common.sources())?;
            print!("{}", gpuslice_cdi::list_table(&plan));
            Ok(())
        }
        Command::Status { config, state_dir, json } => {
            let state_dir = match state_dir {
                Some(dir) => dir,
                None => gpuslice_cdi::load_config(&config)?.state_dir,
            };
            let report = gpuslice_cdi::status::status(&state_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", gpuslice_cdi::status::table(&report));
            }
            Ok(())
        }
        Command::Setup { engine, file, config, dry_run, runtime, swarm, runtime_path } => {
            use gpuslice_cdi::setup::{Mode, SetupOptions};
            let spec_dir = gpuslice_cdi::load_config(&config)?.spec_dir;
            let mode = if swarm {
                let spec_path = spec_dir.join(gpuslice_cdi::SPEC_FILE);
                let spec = gpuslice_cdi::validate_file(&spec_path)
                    .context("--swarm advertises the spec's slices; run gpuslice-cdi generate first")?;
                Mode::Swarm(runtime_path, gpuslice_cdi::slice_names(&spec))
            } else if runtime {
                Mode::Runtime(runtime_path)
            } else {
                Mode::Cdi
            };
            let outcome = gpuslice_cdi::setup::setup(&SetupOptions { engine, mode, file, spec_dir, dry_run })?;
            print!("{}", outcome.message().trim_end().to_string() + "\n");
            Ok(())
        }
        Command::Daemon { config, nvml_lib, state_dir, passes, json, metrics } => {
            gpuslice_cdi::guard::daemon(&gpuslice_cdi::guard::Options {
                config_path: config,
                nvml_lib,
                state_dir,
                passes,
                json,
                metrics: metrics.map(|m| m.0),
            })
        }
        Command::Top { config, metrics, interval, once } => {
            let addr = match metrics {
                Some(a) => a,
                None => gpuslice_cdi::load_config(&config)?
                    .guard
                    .metrics_addr()
                    .ok()
                    .flatten()
                    .context("the config's [guard] metrics is off: pass --metrics ADDR")?,
            };
            anyhow::ensure!((0.1..=3600.0).contains(&interval), "--interval must be between 0.1 and 3600 seconds");
            gpuslice_cdi::top::run(&gpuslice_cdi::top::Options {
                addr,
                interval: std::time::Duration::from_secs_f64(interval),
                once,
            })
        }
        Command::Mig { action: MigCommand::Apply { common, dry_run } } => {
            for line in gpuslice_cdi::mig::apply(&common.sources(), dry_run)? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Validate { file } => {
            let spec = gpuslice_cdi::validate_file(&file)?;
            let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
            println!(
                "{}: valid CDI {} spec of kind {} with {} devices: {}",
                file.display(),
                spec.cdi_version,
                spec.kind,
                names.len(),
                names.join(", ")
            );
            Ok(())
        }
    }
}
