//! Compiles the kubelet's device plugin API (`device-plugin/proto`, the definition the plugin
//! itself is built from) for the `kubelet` subcommand: its Registration server and
//! DevicePlugin client.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../../device-plugin/proto/deviceplugin/v1beta1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[proto], &["../../device-plugin/proto"])?;
    Ok(())
}
