//! The `[kubernetes]` table: defaults, every key, and one clear error per bad value.

use gpuslice_core::config::{Allocation, Config, KubernetesConfig, ResourceNaming, validate_extended_resource_name};
use gpuslice_core::units::Span;

#[test]
fn defaults_when_left_out() {
    let k = Config::parse("").unwrap().kubernetes;
    assert_eq!(k, KubernetesConfig::default());
    assert_eq!(k.resource, "gpuslice.dev/vgpu");
    assert_eq!(k.gpu_resource, "gpuslice.dev/gpu");
    assert_eq!((k.resources, k.allocation), (ResourceNaming::Single, Allocation::Spread));
    assert_eq!(k.device_plugin_dir.to_str(), Some("/var/lib/kubelet/device-plugins"));
    assert_eq!(k.interval, Span::from_millis(2000));
}

#[test]
fn every_key_parses() {
    let k = Config::parse(
        r#"
[kubernetes]
resource = "example.com/slice"
resources = "by-size"
gpu_resource = "example.com/whole"
allocation = "binpack"
device_plugin_dir = "/tmp/dp"
interval = "100ms"
"#,
    )
    .unwrap()
    .kubernetes;
    assert_eq!(k.resource, "example.com/slice");
    assert_eq!((k.resources, k.allocation), (ResourceNaming::BySize, Allocation::Binpack));
    assert_eq!(k.gpu_resource, "example.com/whole");
    assert_eq!(k.device_plugin_dir.to_str(), Some("/tmp/dp"));
    assert_eq!(k.interval, Span::from_millis(100));
}

#[test]
fn each_bad_value_is_one_error_naming_its_key() {
    let long = format!("resources = \"by-size\"\nresource = \"a.dev/{}\"", "v".repeat(48));
    let cases = [
        ("resource = \"vgpu\"", "kubernetes.resource = \"vgpu\": must be domain/name"),
        ("resource = \"Gpuslice.dev/vgpu\"", "not a DNS subdomain"),
        ("resource = \"kubernetes.io/vgpu\"", "reserved by Kubernetes"),
        ("resource = \"gpuslice.dev/-vgpu\"", "must be 1 to 63"),
        ("gpu_resource = \"gpuslice.dev/\"", "kubernetes.gpu_resource"),
        ("gpu_resource = \"other.dev/vgpu\"", "same name part as `resource`"),
        (long.as_str(), "too long for resources = \"by-size\""),
        ("resources = \"per-size\"", "kubernetes.resources"),
        ("allocation = \"pack\"", "kubernetes.allocation"),
        ("device_plugin_dir = \"dp\"", "kubernetes.device_plugin_dir = \"dp\": must be an absolute path"),
        ("interval = \"10ms\"", "kubernetes.interval = \"10ms\": must be between 50ms and 60s"),
        ("socket = \"x\"", "unknown field `socket`"),
    ];
    for (body, want) in cases {
        let err = Config::parse(&format!("[kubernetes]\n{body}\n")).unwrap_err().to_string();
        assert!(err.contains(want), "{body:?}: {err:?} should say {want:?}");
        assert_eq!(err.lines().count(), 1, "{err:?}");
    }
}

#[test]
fn extended_resource_names() {
    for good in ["gpuslice.dev/vgpu", "example.com/vgpu-20g", "a/b", "nvidia.com/gpu.shared"] {
        assert_eq!(validate_extended_resource_name(good), Ok(()), "{good}");
    }
    for bad in ["", "vgpu", "/vgpu", "a.dev/", "a..dev/x", "a.dev/x/y", "requests.a/x", "a.dev/x-"] {
        assert!(validate_extended_resource_name(bad).is_err(), "{bad}");
    }
}
