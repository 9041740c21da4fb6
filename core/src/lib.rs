//! Definitions shared by every gpuslice component, so that each exists once.
//!
//! A node's life starts with [`config::Config`], read from `/etc/gpuslice/config.toml`.
//! `gpuslice-cdi` asks NVML for the GPUs, and [`plan::plan`] turns config plus GPUs into the
//! node's devices: `slice0`, `slice1`, … (or whole GPUs `gpu<N>`). Each device becomes a CDI
//! device ([`cdi`]) in the spec container engines read, and its [`limits::Limits`] are
//! written to `/run/gpuslice/slices/<name>/limits`, where the hook mounts them read-only into
//! the container and the interception library reads them. The hook finds the host driver's
//! libraries to mount through the driver root's `ld.so.cache` ([`driver_files`]), and gives the
//! container a loader cache that lists them beside the image's own ([`ld_cache`]).

pub mod board;
pub mod cdi;
pub mod config;
pub mod containers;
pub mod driver_files;
pub mod fsutil;
pub mod ld_cache;
pub mod limits;
pub mod mig;
pub mod mountinfo;
pub mod plan;
pub mod region;
pub mod reservations;
pub mod shm;
pub mod state;
pub mod units;
