//! Generates the kubelet's `deviceplugin/v1beta1` API (client and server of `Registration` and
//! `DevicePlugin`) from `proto/`, parsed by `protox` so that no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/deviceplugin/v1beta1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
