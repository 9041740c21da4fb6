//! The gpuslice OCI hook, as a library under the thin `gpuslice-hook` binary.
//!
//! The CDI spec that `gpuslice-cdi` writes gives each slice two hooks:
//!
//! - `create-container` runs as root on the host, in the container's mount namespace, before
//!   `pivot_root`, with the container's rootfs as a plain directory. It makes sure the
//!   slice's state exists on the host ([`slice`]), checks that the slice's GPU is still in the
//!   node ([`gpu`]), mounts the driver, the interception library, the loader's preload list
//!   and cache, and the slice's state into the rootfs ([`inject`]), records the container in
//!   the slice's region, and writes its host-only record for the host guard ([`record`]: its
//!   cgroups, which tie the driver's host PIDs to the slice).
//! - `poststop` runs on the host after the container is gone: it takes the container out of
//!   the region and frees what its processes still had charged, without ever blocking: any
//!   process on the slice can hold the region's lock, so it is waited for briefly and the
//!   cleanup is otherwise left to the next reclaim. It removes the host record in any case.
//!
//! Everything in the rootfs came from an image we do not trust: `/etc` may be a symlink to
//! the host's `/etc`, `/run` may point at `/proc/self/root`. Take one mount as an example: to
//! put the interception library at `/usr/lib/gpuslice/libgpuslice.so`, the hook opens the
//! rootfs ([`rootfs::Rootfs::open`]), creates the mount point one component at a time with
//! every lookup done by `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so a symlink
//! anywhere on the way resolves as if the rootfs were `/`, and mounts onto
//! `/proc/self/fd/<fd>` of the descriptor it resolved ([`rootfs::Rootfs::bind_mount`]): the
//! path is never looked up again by name, so swapping a component for a symlink after the
//! check changes nothing. The hook reads nothing from the container's environment, executes
//! nothing from the image, and is linked statically, so no loader variable reaches it.
//!
//! A failure stops the container with one line on standard error saying what to do; the
//! mounts made so far are undone and the container is not recorded.

pub mod gpu;
pub mod inject;
pub mod oci;
pub mod record;
pub mod rootfs;
pub mod slice;
pub mod syslog;

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use gpuslice_core::config::Mode;
use gpuslice_core::driver_files;

use crate::inject::{HostFiles, Injector};
use crate::rootfs::Rootfs;
use crate::slice::{Slice, SliceArgs};

/// Everything a hook invocation is told on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookArgs {
    pub slice: SliceArgs,
    /// Root under which the NVIDIA driver's files are found.
    pub driver_root: PathBuf,
    /// The interception library on the host.
    pub shim_path: PathBuf,
}

/// The `createContainer` hook: sets the container up for its slice. `state` is the runtime's
/// JSON on standard input.
/// The container this run of the hook is for, once its state is read (for the host's log line
/// when the hook refuses it; see [`syslog`]).
pub static CONTAINER_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn create_container(args: &HookArgs, state: impl Read) -> Result<()> {
    let container = oci::read_state(state)?;
    let _ = CONTAINER_ID.set(container.id.clone());
    let rootfs_path = oci::rootfs_path(&container.bundle)?;
    let slice = Slice::ensure(&args.slice)?;
    let name = slice.name().to_owned();
    gpu::check_present(&args.driver_root, &name, &slice.limits.gpu_uuid)?;
    let driver = driver_files::driver_libraries(&args.driver_root).with_context(|| {
        format!("{name}: no usable NVIDIA driver under {} (install it, or set driver_root)", args.driver_root.display())
    })?;
    let shim = match slice.limits.mode {
        Mode::Shim => {
            if !args.shim_path.is_file() {
                anyhow::bail!(
                    "{name}: the interception library {} is missing; reinstall gpuslice or fix shim_path",
                    args.shim_path.display()
                );
            }
            Some(args.shim_path.as_path())
        }
        // The whole GPU has no limits; a MIG device's are the hardware's: no preload.
        Mode::None | Mode::Mig => None,
    };
    let scratch_dir = args.slice.state_dir.join("tmp");
    let host = HostFiles { driver: &driver, shim, scratch_dir: &scratch_dir };

    let rootfs = Rootfs::open(&rootfs_path)?;
    let mut injector = Injector::new(&rootfs);
    injector.driver(&host).with_context(|| format!("{name}: mounting the driver into the container"))?;
    if shim.is_some() {
        injector.preload(&scratch_dir).with_context(|| format!("{name}: setting up /etc/ld.so.preload"))?;
    }
    injector.slice(&slice).with_context(|| format!("{name}: mounting the slice's state"))?;
    record::record(&args.slice.state_dir, &container, &name)?;
    if let Some(region) = &slice.region
        && let Err(e) = region.attach_container(&container.id)
    {
        let _ = record::forget(&args.slice.state_dir, &container, &name);
        return Err(e).with_context(|| format!("{name}: recording container {} in the region", container.id));
    }
    injector.commit();
    Ok(())
}

/// What `poststop` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poststop {
    /// Done, or nothing to do (a slice without a region).
    Done,
    /// The region's lock stayed held (a process on the slice keeps it): nothing was waited
    /// for; the container's record and its dead processes' slots are left for the next reclaim
    /// (any charge that would not fit, the next `poststop` of the slice, a memory query). The
    /// line says so.
    Deferred(String),
}

/// The `poststop` hook: takes the container out of its slice's region and frees what the
/// container's processes still had charged, and removes the container's host record (first,
/// whatever happens to the region: the guard must not tie a later container's processes to
/// it). A slice without a region has nothing else to do. It never blocks: the region's lock is
/// waited for at most [`slice::POSTSTOP_LOCK_WAIT`].
pub fn poststop(args: &HookArgs, state: impl Read) -> Result<Poststop> {
    let container = oci::read_state(state)?;
    let forgotten = record::forget(&args.slice.state_dir, &container, &args.slice.name);
    let Some(region) = Slice::existing_region(&args.slice)? else { return forgotten.map(|()| Poststop::Done) };
    let done = match region.detach_container(&container.id) {
        Ok(_) => Ok(Poststop::Done),
        Err(e) if e.is_busy() => Ok(Poststop::Deferred(format!(
            "{}: {e}; container {}'s record and its processes' memory are left for the next reclaim",
            args.slice.name, container.id
        ))),
        Err(e) => {
            Err(e).with_context(|| format!("{}: removing container {} from the region", args.slice.name, container.id))
        }
    }?;
    forgotten.map(|()| done)
}
