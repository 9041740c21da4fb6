//! The gpuslice OCI hook, as a library the (future) thin binary calls.
//!
//! The hook runs as root on the host, before `pivot_root`, with the container's rootfs as a
//! plain directory. Everything in that directory came from an image we do not trust: `/etc`
//! may be a symlink to the host's `/etc`, `/run` may point at `/proc/self/root`,
//! `/etc/ld.so.preload` may point at a host file. Take one mount as an example: to put the
//! interception library at `/usr/lib/gpuslice/libgpuslice.so`, the hook opens the rootfs
//! ([`rootfs::Rootfs::open`]), creates the mount point one component at a time with every
//! lookup done by `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so a symlink anywhere
//! on the way resolves as if the rootfs were `/`, and mounts onto `/proc/self/fd/<fd>` of the
//! descriptor it resolved ([`rootfs::Rootfs::bind_mount`]): the path is never looked up
//! again by name, so swapping a component for a symlink after the check changes nothing.

pub mod rootfs;
