//! The guard's Prometheus endpoint: `GET /metrics` on `[guard] metrics` (`--metrics`),
//! `127.0.0.1:9403` by default.
//!
//! Every pass, after it has observed and acted, the guard renders the whole exposition once
//! ([`render`]) from what the pass already has: its [`Snapshot`] (the driver's numbers per
//! process, slice and GPU), the slices' regions as read that pass ([`RegionView`]: what the
//! interception library charged, paced and refused), the hook's container records (names) and
//! the counters the guard keeps across passes ([`Tally`]: GPU time integrated from the
//! driver's samples, time under throttle, kills). A scrape ([`Server`]) only copies the latest
//! text out: it reads no file, takes no region lock, and costs the same however many slices
//! there are. A region that cannot be read is `gpuslice_region_readable 0` and one log line.
//!
//! The format is OpenMetrics text from `prometheus-client`; the HTTP server is `tiny_http` on
//! one thread of its own, so a slow or stuck scraper never delays a pass.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use gpuslice_core::containers::ContainerRecord;
use gpuslice_core::limits::Limits;
use gpuslice_core::mig::MigInstance;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::enforce::KillReason;
use super::observe::{Owner, Snapshot};
use super::regions::RegionView;

/// The content type of the exposition (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabels {
    gpu_uuid: String,
    gpu_index: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SliceLabels {
    slice: String,
    gpu_uuid: String,
    gpu_index: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    slice: String,
    gpu_uuid: String,
    gpu_index: String,
    /// The name the engine gave it, else the first 12 characters of its id.
    container: String,
    container_id: String,
    pod: String,
    namespace: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KillLabels {
    slice: String,
    gpu_uuid: String,
    gpu_index: String,
    reason: String,
}

/// A MIG device (mode `mig`): the guard has nothing to enforce on it, the hardware does.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MigLabels {
    slice: String,
    gpu_uuid: String,
    gpu_index: String,
    mig_uuid: String,
    profile: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type GaugeF = Gauge<f64, AtomicU64>;
type CounterF = Counter<f64, AtomicU64>;

fn reason_label(r: KillReason) -> &'static str {
    match r {
        KillReason::OverLimit => "memory_limit",
        KillReason::Unsliced => "unsliced",
        KillReason::LockSquat => "lock_squat",
    }
}

/// What the guard counts across passes.
#[derive(Debug, Default)]
pub struct Tally {
    last_at_ms: Option<u64>,
    /// Per slice, GPU seconds from the driver's samples.
    gpu_seconds: BTreeMap<String, f64>,
    /// Per (slice, container id), GPU seconds from the driver's samples.
    container_gpu_seconds: BTreeMap<(String, String), f64>,
    /// Per slice, seconds under the guard's throttle.
    throttled_seconds: BTreeMap<String, f64>,
    /// The slices under throttle after the previous pass.
    throttled_before: Vec<String>,
    /// Per (slice or "", reason), processes killed.
    kills: BTreeMap<(String, &'static str), u64>,
    /// Per container id, the device numbers of its state mounts (how its processes tag their
    /// region slots), looked up once while its first process lives.
    pub(crate) devices: HashMap<String, Vec<u64>>,
}

impl Tally {
    /// Adds what `snap` saw since the previous pass: each process's mean share of its GPU
    /// over the time between the two passes, and that time to each slice that was under
    /// throttle since; `throttled` are those under throttle from now on.
    pub fn add_pass<'a>(&mut self, snap: &Snapshot, throttled: impl Iterator<Item = &'a str>) {
        let elapsed = self.last_at_ms.map_or(0.0, |last| snap.at_ms.saturating_sub(last) as f64 / 1000.0);
        self.last_at_ms = Some(snap.at_ms);
        for s in &snap.slices {
            self.gpu_seconds.entry(s.info.name.clone()).or_insert(0.0);
        }
        for p in &snap.processes {
            let Owner::Slice { slice, container, .. } = &p.owner else { continue };
            let seconds = elapsed * f64::from(p.sm_percent) / 100.0;
            *self.gpu_seconds.entry(slice.clone()).or_insert(0.0) += seconds;
            *self.container_gpu_seconds.entry((slice.clone(), container.clone())).or_insert(0.0) += seconds;
        }
        for slice in &self.throttled_before {
            *self.throttled_seconds.entry(slice.clone()).or_insert(0.0) += elapsed;
        }
        self.throttled_before = throttled.map(str::to_owned).collect();
    }

    /// Counts a process killed (`slice`: the slice it was charged to, if any).
    pub fn kill(&mut self, slice: Option<&str>, reason: KillReason) {
        *self.kills.entry((slice.unwrap_or_default().to_owned(), reason_label(reason))).or_insert(0) += 1;
    }

    /// Forgets containers that are gone.
    pub fn retain_containers(&mut self, records: &[ContainerRecord]) {
        self.devices.retain(|id, _| records.iter().any(|r| &r.id == id));
        self.container_gpu_seconds.retain(|(_, id), _| records.iter().any(|r| &r.id == id));
    }
}

/// What [`render`] reads.
#[derive(Debug)]
pub struct View<'a> {
    pub snapshot: &'a Snapshot,
    pub regions: &'a [RegionView],
    pub records: &'a [ContainerRecord],
    pub tally: &'a Tally,
    /// How long the pass took.
    pub pass_seconds: f64,
    /// The node's MIG devices, from their limits and MIG records.
    pub migs: &'a [(Limits, MigInstance)],
}

fn gauge<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, GaugeF>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, GaugeF>::default();
    registry.register(name, help, f.clone());
    f
}

fn counter<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, CounterF>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, CounterF>::default();
    registry.register(name, help, f.clone());
    f
}

/// The whole exposition for one pass.
pub fn render(v: &View<'_>) -> String {
    let mut r = Registry::with_prefix("gpuslice");
    r.register(
        "build",
        "The gpuslice release that serves these metrics",
        Info::new(BuildLabels { version: env!("CARGO_PKG_VERSION").to_owned() }),
    );

    let gpu_total = gauge::<GpuLabels>(&mut r, "gpu_memory_total_bytes", "The card's device memory");
    let gpu_used =
        gauge::<GpuLabels>(&mut r, "gpu_memory_used_bytes", "Device memory its processes hold, by the driver's count");
    let gpu_promised = gauge::<GpuLabels>(
        &mut r,
        "gpu_memory_promised_bytes",
        "The sum of the memory limits of the card's slices (above the total: overcommitted)",
    );
    let gpu_unsliced =
        gauge::<GpuLabels>(&mut r, "gpu_unsliced_processes", "Processes on a sliced card outside every slice");

    let mig_memory = gauge::<MigLabels>(
        &mut r,
        "mig_device_memory_bytes",
        "A MIG device's memory, a limit its hardware keeps (the guard does not act on MIG devices)",
    );
    let mig_sms = gauge::<MigLabels>(&mut r, "mig_device_multiprocessors", "A MIG device's streaming multiprocessors");
    for (l, m) in v.migs {
        let labels = MigLabels {
            slice: l.slice.clone(),
            gpu_uuid: l.gpu_uuid.clone(),
            gpu_index: l.gpu_index.to_string(),
            mig_uuid: m.uuid.clone(),
            profile: m.profile.clone(),
        };
        mig_memory.get_or_create(&labels).set(m.memory_bytes as f64);
        mig_sms.get_or_create(&labels).set(f64::from(m.sm_count));
    }

    let limit = gauge::<SliceLabels>(&mut r, "slice_memory_limit_bytes", "The slice's memory limit");
    let allowance = gauge::<SliceLabels>(
        &mut r,
        "slice_memory_allowance_bytes",
        "What the slice may hold by the driver's count before the guard acts (limit plus context tolerance)",
    );
    let used = gauge::<SliceLabels>(
        &mut r,
        "slice_memory_used_bytes",
        "Device memory the slice's processes hold, by the driver's count",
    );
    let charged = gauge::<SliceLabels>(
        &mut r,
        "slice_memory_charged_bytes",
        "Device memory the interception library charged to the slice (its region)",
    );
    let share = gauge::<SliceLabels>(
        &mut r,
        "slice_compute_share_ratio",
        "The slice's configured share of its GPU's time (0-1)",
    );
    let processes =
        gauge::<SliceLabels>(&mut r, "slice_processes", "The slice's processes on its GPU, by the driver's list");
    let containers = gauge::<SliceLabels>(&mut r, "slice_containers", "Containers running with the slice");
    let gpu_time = counter::<SliceLabels>(
        &mut r,
        "slice_gpu_time_seconds",
        "GPU time the slice's processes used, from the driver's utilisation samples (rate(): the share of the GPU)",
    );
    let paced = counter::<SliceLabels>(
        &mut r,
        "slice_charged_gpu_time_seconds",
        "GPU time the interception library charged to the slice's pacing (its region)",
    );
    let held = counter::<SliceLabels>(
        &mut r,
        "slice_held_back_seconds",
        "Time the slice's processes were held back by the interception library's pacing",
    );
    let throttled = counter::<SliceLabels>(
        &mut r,
        "slice_throttled_seconds",
        "Time the slice spent under the guard's throttle (cgroup freezer)",
    );
    let refused = counter::<SliceLabels>(
        &mut r,
        "slice_refused_allocations",
        "Allocations the interception library refused for the slice's memory limit (its region)",
    );
    let readable = gauge::<SliceLabels>(
        &mut r,
        "region_readable",
        "1 when the slice's region passed its checks this pass; 0 when it is damaged or unreadable (the log says why)",
    );
    let kills = counter::<KillLabels>(&mut r, "guard_kills", "Processes the guard killed, by reason");

    let c_used = gauge::<ContainerLabels>(
        &mut r,
        "memory_used_bytes",
        "Device memory the container's processes hold, by the driver's count",
    );
    let c_charged = gauge::<ContainerLabels>(
        &mut r,
        "memory_charged_bytes",
        "Device memory the interception library charged to the container's processes (the slice's region)",
    );
    let c_processes = gauge::<ContainerLabels>(
        &mut r,
        "container_processes",
        "The container's processes on the slice's GPU, by the driver's list",
    );
    let c_gpu_time = counter::<ContainerLabels>(
        &mut r,
        "gpu_time_seconds",
        "GPU time the container's processes used, from the driver's utilisation samples",
    );

    let snap = v.snapshot;
    for (name, help, value) in [
        ("guard_pass_duration_seconds", "How long the guard's latest pass took", v.pass_seconds),
        (
            "guard_errors",
            "Things the guard's latest pass could not read (the log names each)",
            snap.errors.len() as f64,
        ),
        ("guard_last_pass_timestamp_seconds", "When the guard's latest pass ran", snap.at_ms as f64 / 1000.0),
    ] {
        let g = GaugeF::default();
        g.set(value);
        r.register(name, help, g);
    }

    for g in &snap.gpus {
        let l = GpuLabels { gpu_uuid: g.uuid.clone(), gpu_index: g.index.to_string() };
        gpu_total.get_or_create(&l).set(g.memory_total as f64);
        gpu_used.get_or_create(&l).set(g.used_bytes as f64);
        let promised = snap
            .slices
            .iter()
            .filter(|s| s.info.gpu_uuid.eq_ignore_ascii_case(&g.uuid))
            .fold(0u64, |a, s| a.saturating_add(s.info.memory_bytes));
        gpu_promised.get_or_create(&l).set(promised as f64);
        let outside = snap
            .processes
            .iter()
            .filter(|p| p.gpu_index == g.index && matches!(p.owner, Owner::Unsliced { .. }))
            .count();
        gpu_unsliced.get_or_create(&l).set(if g.sliced { outside as f64 } else { 0.0 });
    }

    for s in &snap.slices {
        let i = &s.info;
        let l = SliceLabels { slice: i.name.clone(), gpu_uuid: i.gpu_uuid.clone(), gpu_index: i.gpu_index.to_string() };
        limit.get_or_create(&l).set(i.memory_bytes as f64);
        allowance.get_or_create(&l).set(s.allowance_bytes as f64);
        used.get_or_create(&l).set(s.used_bytes as f64);
        share.get_or_create(&l).set(f64::from(i.cores_percent) / 100.0);
        processes.get_or_create(&l).set(s.processes as f64);
        containers.get_or_create(&l).set(s.containers.len() as f64);
        gpu_time.get_or_create(&l).inc_by(v.tally.gpu_seconds.get(&i.name).copied().unwrap_or(0.0));
        throttled.get_or_create(&l).inc_by(v.tally.throttled_seconds.get(&i.name).copied().unwrap_or(0.0));

        let region = v.regions.iter().find(|r| r.slice == i.name);
        if let Some(region) = region {
            readable.get_or_create(&l).set(if region.error.is_none() { 1.0 } else { 0.0 });
            if region.error.is_none() {
                charged.get_or_create(&l).set(region.charged_bytes as f64);
                paced.get_or_create(&l).inc_by(region.gpu_ns_total as f64 / 1e9);
                held.get_or_create(&l).inc_by(region.held_ns_total as f64 / 1e9);
                refused.get_or_create(&l).inc_by(region.refused_total as f64);
            }
        }
        let by_device = region.filter(|r| r.error.is_none()).map(RegionView::charged_by_container).unwrap_or_default();

        for id in &s.containers {
            let Some(rec) = v.records.iter().find(|r| &r.id == id && r.slice == i.name) else { continue };
            let cl = ContainerLabels {
                slice: l.slice.clone(),
                gpu_uuid: l.gpu_uuid.clone(),
                gpu_index: l.gpu_index.clone(),
                container: rec.name.clone().unwrap_or_else(|| rec.id.chars().take(12).collect()),
                container_id: rec.id.clone(),
                pod: rec.pod.clone().unwrap_or_default(),
                namespace: rec.namespace.clone().unwrap_or_default(),
            };
            let (mut bytes, mut count) = (0u64, 0usize);
            for p in snap.processes_of(&i.name) {
                if matches!(&p.owner, Owner::Slice { container, .. } if container == id) {
                    bytes = bytes.saturating_add(p.used_bytes);
                    count += 1;
                }
            }
            c_used.get_or_create(&cl).set(bytes as f64);
            c_processes.get_or_create(&cl).set(count as f64);
            let seconds = v.tally.container_gpu_seconds.get(&(i.name.clone(), id.clone())).copied().unwrap_or(0.0);
            c_gpu_time.get_or_create(&cl).inc_by(seconds);
            if region.is_some_and(|r| r.error.is_none()) {
                let devices = v.tally.devices.get(id).map(Vec::as_slice).unwrap_or_default();
                let mine = devices.iter().filter_map(|d| by_device.get(d)).fold(0u64, |a, b| a.saturating_add(*b));
                c_charged.get_or_create(&cl).set(mine as f64);
            }
        }
    }

    for ((slice, reason), n) in &v.tally.kills {
        let info = snap.slice(slice).map(|s| &s.info);
        let l = KillLabels {
            slice: slice.clone(),
            gpu_uuid: info.map(|i| i.gpu_uuid.clone()).unwrap_or_default(),
            gpu_index: info.map(|i| i.gpu_index.to_string()).unwrap_or_default(),
            reason: (*reason).to_owned(),
        };
        kills.get_or_create(&l).inc_by(*n as f64);
    }

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

/// The latest exposition, shared between the guard and the server thread.
#[derive(Debug, Clone, Default)]
pub struct Latest(Arc<Mutex<Arc<String>>>);

impl Latest {
    pub fn set(&self, text: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(text);
    }

    pub fn get(&self) -> Arc<String> {
        Arc::clone(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The HTTP server of `/metrics`, on a thread of its own.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
}

impl Server {
    /// Listens on `addr` and serves `latest` until the process exits.
    pub fn start(addr: SocketAddr, latest: Latest) -> Result<Server, String> {
        let server = tiny_http::Server::http(addr).map_err(|e| format!("metrics: listening on {addr}: {e}"))?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&server, &latest))
            .map_err(|e| format!("metrics: starting its thread: {e}"))?;
        Ok(Server { addr: bound })
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    // Both are ASCII constants of this module.
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|()| unreachable!())
}

fn serve(server: &tiny_http::Server, latest: &Latest) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or_default().to_owned();
        let response = match (request.method(), path.as_str()) {
            (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
                let text = latest.get();
                tiny_http::Response::from_data(text.as_bytes().to_vec())
                    .with_header(header("Content-Type", CONTENT_TYPE))
            }
            (tiny_http::Method::Get, "/") => {
                tiny_http::Response::from_data(b"gpuslice guard: metrics at /metrics\n".to_vec())
                    .with_header(header("Content-Type", "text/plain; charset=utf-8"))
            }
            _ => tiny_http::Response::from_data(b"not found\n".to_vec()).with_status_code(404),
        };
        // A scraper that went away is its own problem.
        let _ = request.respond(response);
    }
}
