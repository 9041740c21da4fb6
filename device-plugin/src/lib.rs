//! `gpuslice-device-plugin`: hands out a node's slices to pods through the kubelet's device
//! plugin API (`deviceplugin/v1beta1`), as CDI devices.
//!
//! One pod, end to end. At start the plugin reads the config (`[kubernetes]`) and scans the
//! node ([`inventory::Scanner`]): the devices of the CDI spec `gpuslice-cdi generate` wrote,
//! each device's limits file (its GPU and size), its region, and whether its GPU is
//! still there (NVML and `/dev/nvidia<minor>`). Each device goes under a resource
//! ([`inventory::resource_for`]: `gpuslice.dev/vgpu`, or `gpuslice.dev/vgpu-20g` by size,
//! `gpuslice.dev/gpu` for whole GPUs). For each resource [`run::Plugin`] serves the
//! `DevicePlugin` service ([`server::ResourceService`]) on `gpuslice-<name>.sock` in the
//! kubelet's device plugin directory and registers it on `kubelet.sock`. The kubelet dials back
//! and opens `ListAndWatch`, which sends the resource's devices with their health, and again at
//! every change the plugin's periodic scan finds. A pod asks for `gpuslice.dev/vgpu: 1`; the
//! kubelet asks `GetPreferredAllocation` which of the free devices to take
//! ([`allocate::preferred`]: spread or binpack over GPUs, at most one slice per GPU per
//! container), then `Allocate` ([`allocate::allocate`]), which answers the CDI name
//! `gpuslice.dev/vgpu=slice3` and the same as a `cdi.k8s.io/gpuslice_slice3` annotation. The
//! kubelet hands both to the container runtime through the CRI; containerd or CRI-O applies the
//! spec's edits, and the OCI hook sets the slice up in the container as for any CDI engine.
//!
//! The mapping from slices to resources lives here, not in `gpuslice-core`'s plan, so that
//! another Kubernetes driver (DRA) can reuse the plan as it is.

pub mod allocate;
pub mod inventory;
pub mod run;
pub mod server;
pub mod uds;

/// The kubelet's `deviceplugin/v1beta1` API, generated from `proto/` at build time: messages,
/// and client and server of `Registration` (served by the kubelet) and `DevicePlugin` (served
/// by a plugin).
#[allow(missing_debug_implementations, clippy::all)]
pub mod api {
    tonic::include_proto!("v1beta1");
}
