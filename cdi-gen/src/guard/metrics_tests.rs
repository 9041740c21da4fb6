//! The metrics and the refusal log from crafted state: a fake driver and host, real limits
//! files, records and regions in a temporary directory, each metric's value checked in the
//! rendered exposition; damaged and locked regions; the HTTP endpoint.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gpuslice_core::region::{self, Region};

use super::super::metrics::{self, Latest, Server, Tally};
use super::*;

/// One `name{labels} value` line.
type Sample = (String, Vec<(String, String)>, f64);

/// The samples of an exposition.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once("=\"").unwrap();
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().unwrap())
        })
        .collect()
}

/// The value of the one sample of `name` whose labels include `want`.
fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = samples(text)
        .into_iter()
        .filter(|(n, labels, _)| {
            n == name && want.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.2)
        .collect();
    assert!(found.len() <= 1, "{name} {want:?}: {found:?} in\n{text}");
    found.first().copied()
}

fn must(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    value(text, name, want).unwrap_or_else(|| panic!("no {name} {want:?} in\n{text}"))
}

const S0: &[(&str, &str)] = &[("slice", "slice0"), ("gpu_uuid", UUID0), ("gpu_index", "0")];

/// slice0 with containers aaa (pid 101, state mount 77; process 10) and bbb (pid 102, mount
/// 88; process 20), a process outside every container on GPU 0 (30), and slice0's region with
/// a process of each container.
struct Crafted {
    w: World,
    region: Region,
    slot_a: usize,
}

fn crafted() -> Crafted {
    let w = World::new("");
    for (id, pid, dev) in [("aaa", 101, 77u64), ("bbb", 102, 88)] {
        let mut r = record(id, "slice0", &format!("/docker/{id}"));
        r.pid = pid;
        r.store(&w.state()).unwrap();
        w.host.mounts.lock().unwrap().insert(pid, vec![dev]);
    }
    w.host.spawn(10, 100, "/docker/aaa");
    w.host.spawn(20, 200, "/docker/bbb");
    w.host.spawn(30, 300, "/system.slice/other");
    // The region's slots carry this test's PID: process 10 is it, seen from inside its container.
    w.host.inner_pids.lock().unwrap().insert(10, std::process::id());
    w.driver.set(0, &[(10, 2 * GIB), (20, GIB), (30, 100 * MIB)]);
    let path = region::region_path(&w.state(), "slice0");
    Region::create(&path).unwrap();
    let region = Region::open(&path).unwrap();
    let slot_a = region.register_in(77).unwrap();
    let slot_b = region.register_in(88).unwrap();
    region.charge(slot_a, GIB, 4 * GIB).unwrap().unwrap();
    region.charge(slot_b, 512 * MIB, 4 * GIB).unwrap().unwrap();
    region.charge_gpu_time(2_000_000_000, 50, 0, 1);
    region.compute().held_ns_total.store(3_000_000_000, Ordering::Relaxed);
    Crafted { w, region, slot_a }
}

fn exposition(w: &World) -> String {
    w.guard.latest_metrics().get().to_string()
}

#[test]
fn every_metric_from_crafted_state() {
    let Crafted { mut w, region, slot_a } = crafted();
    region.note_refused(slot_a);
    w.driver.sample(0, 1_000, &[(10, 30), (20, 20)]);
    let first = w.pass();
    std::thread::sleep(Duration::from_millis(50));
    w.driver.sample(0, 2_000, &[(10, 30), (20, 20)]);
    let second = w.pass();
    let elapsed = (second.snapshot.at_ms - first.snapshot.at_ms) as f64 / 1000.0;
    let t = exposition(&w);
    let near = |got: f64, want: f64| (got - want).abs() < 1e-6;

    assert_eq!(must(&t, "gpuslice_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    let g0: &[(&str, &str)] = &[("gpu_uuid", UUID0), ("gpu_index", "0")];
    let g1: &[(&str, &str)] = &[("gpu_uuid", UUID1), ("gpu_index", "1")];
    assert_eq!(must(&t, "gpuslice_gpu_memory_total_bytes", g0), (80 * GIB) as f64);
    assert_eq!(must(&t, "gpuslice_gpu_memory_used_bytes", g0), (3 * GIB + 100 * MIB) as f64);
    assert_eq!(must(&t, "gpuslice_gpu_memory_promised_bytes", g0), (8 * GIB) as f64, "slice0 + slice1");
    assert_eq!(must(&t, "gpuslice_gpu_memory_promised_bytes", g1), 0.0);
    assert_eq!(must(&t, "gpuslice_gpu_unsliced_processes", g0), 1.0);

    assert_eq!(must(&t, "gpuslice_slice_memory_limit_bytes", S0), (4 * GIB) as f64);
    assert_eq!(must(&t, "gpuslice_slice_memory_allowance_bytes", S0), (4 * GIB + 512 * MIB) as f64);
    assert_eq!(must(&t, "gpuslice_slice_memory_used_bytes", S0), (3 * GIB) as f64);
    assert_eq!(must(&t, "gpuslice_slice_memory_charged_bytes", S0), (GIB + 512 * MIB) as f64);
    assert_eq!(must(&t, "gpuslice_slice_compute_share_ratio", S0), 0.5);
    assert_eq!(must(&t, "gpuslice_slice_processes", S0), 2.0);
    assert_eq!(must(&t, "gpuslice_slice_containers", S0), 2.0);
    assert_eq!(must(&t, "gpuslice_slice_refused_allocations_total", S0), 1.0);
    assert_eq!(must(&t, "gpuslice_slice_charged_gpu_time_seconds_total", S0), 2.0);
    assert_eq!(must(&t, "gpuslice_slice_held_back_seconds_total", S0), 3.0);
    assert_eq!(must(&t, "gpuslice_slice_throttled_seconds_total", S0), 0.0);
    assert_eq!(must(&t, "gpuslice_region_readable", S0), 1.0);
    let gpu_time = must(&t, "gpuslice_slice_gpu_time_seconds_total", S0);
    assert!(near(gpu_time, elapsed * 0.5), "{gpu_time} after {elapsed} s at 30 % + 20 %");
    // slice1 has no region: its region metrics are absent, the driver's are there.
    let s1: &[(&str, &str)] = &[("slice", "slice1")];
    assert_eq!(value(&t, "gpuslice_region_readable", s1), None);
    assert_eq!(must(&t, "gpuslice_slice_memory_used_bytes", s1), 0.0);

    let a: &[(&str, &str)] = &[("slice", "slice0"), ("container", "aaa-name"), ("container_id", "aaa")];
    let b: &[(&str, &str)] = &[("slice", "slice0"), ("container", "bbb-name"), ("container_id", "bbb")];
    assert_eq!(must(&t, "gpuslice_memory_used_bytes", a), (2 * GIB) as f64);
    assert_eq!(must(&t, "gpuslice_memory_used_bytes", b), GIB as f64);
    assert_eq!(must(&t, "gpuslice_memory_charged_bytes", a), GIB as f64);
    assert_eq!(must(&t, "gpuslice_memory_charged_bytes", b), (512 * MIB) as f64);
    assert_eq!(must(&t, "gpuslice_container_processes", a), 1.0);
    let a_time = must(&t, "gpuslice_gpu_time_seconds_total", a);
    assert!(near(a_time, elapsed * 0.3), "{a_time} after {elapsed} s at 30 %");

    assert_eq!(must(&t, "gpuslice_guard_errors", &[]), 0.0);
    assert!(must(&t, "gpuslice_guard_pass_duration_seconds", &[]) > 0.0);
    assert_eq!(must(&t, "gpuslice_guard_last_pass_timestamp_seconds", &[]), second.snapshot.at_ms as f64 / 1000.0);
    assert!(t.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");

    // A kill is counted by slice and reason: aaa's process grows past the limit.
    w.driver.set(0, &[(10, 6 * GIB), (20, GIB)]);
    w.pass();
    assert_eq!(w.host.kills(), [10]);
    let t = exposition(&w);
    let kill: Vec<(&str, &str)> = S0.iter().copied().chain([("reason", "memory_limit")]).collect();
    assert_eq!(must(&t, "gpuslice_guard_kills_total", &kill), 1.0);
}

#[test]
fn the_dashboard_asks_only_for_metrics_the_guard_serves() {
    let Crafted { mut w, .. } = crafted();
    w.driver.set(0, &[(10, 6 * GIB), (20, GIB)]);
    w.pass();
    let t = exposition(&w);
    let served: std::collections::HashSet<String> = samples(&t).into_iter().map(|s| s.0).collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/grafana/gpuslice-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("gpuslice_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                assert!(
                    served.contains(&name),
                    "panel {:?} asks for {name}, which the guard does not serve",
                    panel["title"]
                );
                asked += 1;
                rest = &rest[at + name.len()..];
            }
        }
    }
    assert!(asked >= 15, "{asked} metric names in the dashboard");
}

#[test]
fn time_under_throttle_is_counted_between_passes() {
    let mut tally = Tally::default();
    let snap = |at_ms| Snapshot { at_ms, ..Snapshot::default() };
    tally.add_pass(&snap(1_000), ["slice0"].into_iter());
    tally.add_pass(&snap(3_500), ["slice0", "slice1"].into_iter());
    tally.add_pass(&snap(4_000), std::iter::empty());
    let w = World::new("");
    let snapshot = w.pass_snapshot_only();
    let records = Vec::new();
    let t = metrics::render(&metrics::View {
        snapshot: &snapshot,
        regions: &[],
        records: &records,
        tally: &tally,
        pass_seconds: 0.0,
        migs: &[],
    });
    // slice0 from the first pass on (2.5 s + 0.5 s), slice1 from the second (0.5 s).
    assert_eq!(must(&t, "gpuslice_slice_throttled_seconds_total", S0), 3.0);
    assert_eq!(must(&t, "gpuslice_slice_throttled_seconds_total", &[("slice", "slice1")]), 0.5);
}

#[test]
fn a_mig_device_is_shown_with_its_instance() {
    let w = World::new("");
    let snapshot = w.pass_snapshot_only();
    let limits = gpuslice_core::limits::Limits {
        slice: "mig0-1".into(),
        mode: gpuslice_core::config::Mode::Mig,
        gpu_uuid: "GPU-00000000-2222-3333-4444-555555555555".into(),
        gpu_index: 0,
        memory_bytes: 40 << 30,
        cores_percent: 45,
        cores_policy: gpuslice_core::config::CoresPolicy::Cap,
        priority: gpuslice_core::config::Priority::Normal,
        generation: 1,
    };
    let mig = gpuslice_core::mig::MigInstance {
        uuid: "MIG-aaaaaaaa-1111-2222-3333-444444444444".into(),
        gpu_instance_id: 1,
        compute_instance_id: 0,
        memory_bytes: 40 << 30,
        sm_count: 60,
        profile: "3g.40gb".into(),
        gi_access_minor: 12,
        ci_access_minor: 13,
    };
    let t = metrics::render(&metrics::View {
        snapshot: &snapshot,
        regions: &[],
        records: &[],
        tally: &metrics::Tally::default(),
        pass_seconds: 0.0,
        migs: &[(limits, mig)],
    });
    let labels =
        [("slice", "mig0-1"), ("mig_uuid", "MIG-aaaaaaaa-1111-2222-3333-444444444444"), ("profile", "3g.40gb")];
    assert_eq!(must(&t, "gpuslice_mig_device_memory_bytes", &labels), (40u64 << 30) as f64);
    assert_eq!(must(&t, "gpuslice_mig_device_multiprocessors", &labels), 60.0);
    assert!(!t.contains("gpuslice_slice_memory_limit_bytes{slice=\"mig0-1\""), "a MIG device is no guarded slice");
}

impl World {
    /// A snapshot of the node with nothing running.
    fn pass_snapshot_only(mut self) -> Snapshot {
        self.guard.pass().snapshot
    }
}

#[test]
fn a_damaged_region_is_a_metric_and_one_line_and_the_rest_stands() {
    let Crafted { mut w, region, .. } = crafted();
    drop(region);
    let path = region::region_path(&w.state(), "slice0");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0..8].copy_from_slice(b"garbage!");
    std::fs::write(&path, &bytes).unwrap();
    let report = w.pass();
    let errors: Vec<&String> = report.snapshot.errors.iter().filter(|e| e.contains("region")).collect();
    assert!(matches!(errors.as_slice(), [e] if e.starts_with("slice0: region not counted")), "{errors:?}");
    let t = exposition(&w);
    assert_eq!(must(&t, "gpuslice_region_readable", S0), 0.0);
    assert_eq!(value(&t, "gpuslice_slice_memory_charged_bytes", S0), None, "no number from a damaged region");
    assert_eq!(value(&t, "gpuslice_slice_refused_allocations_total", S0), None);
    assert_eq!(must(&t, "gpuslice_slice_memory_used_bytes", S0), (3 * GIB) as f64, "the driver's numbers stand");
    assert_eq!(must(&t, "gpuslice_guard_errors", &[]), 1.0);
    // A region file cut short (a plain file a tool made) is damaged the same way.
    std::fs::write(&path, &bytes[..100]).unwrap();
    w.pass();
    assert_eq!(must(&exposition(&w), "gpuslice_region_readable", S0), 0.0);
}

#[test]
fn a_held_region_lock_does_not_stall_a_pass() {
    let Crafted { mut w, .. } = crafted();
    let path = region::region_path(&w.state(), "slice0");
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let _held = gpuslice_core::shm::lock::try_lock(&file, region::REGION_LOCK).unwrap().expect("the lock is free");
    let start = Instant::now();
    w.pass();
    assert!(start.elapsed() < Duration::from_millis(500), "a pass waited on the region lock: {:?}", start.elapsed());
    assert_eq!(must(&exposition(&w), "gpuslice_slice_memory_charged_bytes", S0), (GIB + 512 * MIB) as f64);
}

/// The refusal lines of a pass.
fn refusals(report: PassReport) -> Vec<String> {
    report.actions.into_iter().filter(|l| l.contains("was refused")).collect()
}

#[test]
fn a_refused_allocation_is_logged_once_per_process() {
    let Crafted { mut w, region, slot_a } = crafted();
    assert!(refusals(w.pass()).is_empty());
    region.note_refused(slot_a);
    let lines = refusals(w.pass());
    assert_eq!(lines.len(), 1, "{lines:?}");
    let want = format!(
        "slice0: container aaa (aaa-name), pid 10 (pid {} in its container): an allocation was refused for the slice's memory limit of 4GiB (1 refused so far",
        std::process::id()
    );
    assert!(lines[0].starts_with(&want), "{}", lines[0]);
    region.note_refused(slot_a);
    assert!(refusals(w.pass()).is_empty(), "the same process again");
    // Another process in the same slot is another process.
    region.unregister(slot_a).unwrap();
    let again = region.register_in(77).unwrap();
    assert_eq!(again, slot_a);
    assert!(refusals(w.pass()).is_empty(), "no refusal yet");
    region.note_refused(again);
    let lines = refusals(w.pass());
    assert!(
        matches!(lines.as_slice(), [l] if l.contains("container aaa (aaa-name)") && l.contains("(1 refused so far")),
        "{lines:?}"
    );
}

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_endpoint_serves_the_latest_exposition() {
    let latest = Latest::default();
    let server = Server::start("127.0.0.1:0".parse().unwrap(), latest.clone()).unwrap();
    latest.set("gpuslice_x 1\n# EOF\n".into());
    let r = get(server.addr, "/metrics");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains(metrics::CONTENT_TYPE), "{r}");
    assert!(r.ends_with("gpuslice_x 1\n# EOF\n"), "{r}");
    latest.set("gpuslice_x 2\n# EOF\n".into());
    assert!(get(server.addr, "/metrics").ends_with("gpuslice_x 2\n# EOF\n"));
    assert!(get(server.addr, "/other").starts_with("HTTP/1.1 404"));
    // A port that is taken is an error, not a panic.
    let e = Server::start(server.addr, latest).unwrap_err();
    assert!(e.contains(&server.addr.to_string()), "{e}");
}
