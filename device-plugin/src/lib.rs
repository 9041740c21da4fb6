//! `gpuslice-device-plugin`: hands out a node's slices to pods through the kubelet's device
//! plugin API (`deviceplugin/v1beta1`), as CDI devices.

/// The kubelet's `deviceplugin/v1beta1` API, generated from `proto/` at build time: messages,
/// and client and server of `Registration` (served by the kubelet) and `DevicePlugin` (served
/// by a plugin).
#[allow(missing_debug_implementations, clippy::all)]
pub mod api {
    tonic::include_proto!("v1beta1");
}
