//! `[guard] metrics`: where the guard's Prometheus endpoint listens.

use gpuslice_core::config::{Config, DEFAULT_METRICS_ADDR};

#[test]
fn metrics_is_on_and_local_by_default() {
    let g = Config::parse("").unwrap().guard;
    assert_eq!(g.metrics, DEFAULT_METRICS_ADDR);
    let addr = g.metrics_addr().unwrap().unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(addr.port(), 9403);
}

#[test]
fn metrics_takes_an_address_or_nothing() {
    let g = Config::parse("[guard]\nmetrics = \"0.0.0.0:19403\"").unwrap().guard;
    assert_eq!(g.metrics_addr().unwrap().unwrap().to_string(), "0.0.0.0:19403");
    let g = Config::parse("[guard]\nmetrics = \"[::1]:9403\"").unwrap().guard;
    assert_eq!(g.metrics_addr().unwrap().unwrap().to_string(), "[::1]:9403");
    assert_eq!(Config::parse("[guard]\nmetrics = \"\"").unwrap().guard.metrics_addr().unwrap(), None);
}

#[test]
fn a_bad_metrics_address_is_named() {
    for bad in ["localhost:9403", "9403", "127.0.0.1", "127.0.0.1:99999", "off"] {
        let e = Config::parse(&format!("[guard]\nmetrics = \"{bad}\"")).unwrap_err().to_string();
        assert!(e.contains("guard.metrics") && e.contains(bad), "{bad}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
