//! What the metrics cost on a large simulated node: 2 GPUs with 32 slices each (64 slices),
//! 4 containers per slice (256), one GPU process per container, every slice's region a real
//! file with a slot per process. Prints, over many rounds, the median and 90th percentile of a
//! guard pass (reading the state and the regions, observing, deciding, rendering the metrics),
//! of rendering the exposition alone, and of a scrape (`GET /metrics` over loopback from the
//! guard's endpoint), and the exposition's size. Driver and host are fakes (in-memory), so the
//! pass time is the guard's own work plus the file reads; a real NVML's calls cost more.
//!
//!     cargo bench -p gpuslice-cdi --bench metrics

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuslice_cdi::guard::driver::{Driver, DriverError, GpuProcess, UtilSample};
use gpuslice_cdi::guard::host::{Host, Killed};
use gpuslice_cdi::guard::metrics::Server;
use gpuslice_cdi::guard::{Guard, metrics};
use gpuslice_core::config::{Config, CoresPolicy, Mode, Priority};
use gpuslice_core::containers::{CgroupLine, ContainerRecord};
use gpuslice_core::limits::Limits;
use gpuslice_core::plan::GpuInfo;
use gpuslice_core::region::{self, Region};

const GIB: u64 = 1 << 30;
const SLICES_PER_GPU: u32 = 32;
const CONTAINERS_PER_SLICE: u32 = 4;
const ROUNDS: usize = 200;

fn uuid(gpu: u32) -> String {
    format!("GPU-{gpu:08}-0000-0000-0000-000000000000")
}

#[derive(Debug)]
struct FakeDriver {
    processes: BTreeMap<u32, Vec<GpuProcess>>,
    t: u64,
}

impl Driver for FakeDriver {
    fn gpus(&mut self) -> Result<Vec<GpuInfo>, DriverError> {
        Ok((0..2)
            .map(|index| GpuInfo {
                index,
                uuid: uuid(index),
                name: "Simulated".into(),
                memory_total: 80 * GIB,
                minor: index,
                pci_bus_id: format!("00000000:0{index}:00.0"),
                mig_enabled: false,
                sm_count: 132,
                mig: Vec::new(),
            })
            .collect())
    }

    fn processes(&mut self, index: u32) -> Result<Vec<GpuProcess>, DriverError> {
        Ok(self.processes.get(&index).cloned().unwrap_or_default())
    }

    fn samples(&mut self, index: u32, _since_us: u64) -> Result<Vec<UtilSample>, DriverError> {
        self.t += 1000;
        let t = self.t;
        Ok(self.processes[&index].iter().map(|p| UtilSample { pid: p.pid, timestamp_us: t, sm_percent: 1 }).collect())
    }
}

/// PID `10_000 + n` is container `n`'s process; container `n`'s first process is `50_000 + n`.
#[derive(Debug)]
struct FakeHost;

fn container_of(pid: u32) -> Option<u32> {
    match pid {
        10_000..50_000 => Some(pid - 10_000),
        50_000.. => Some(pid - 50_000),
        _ => None,
    }
}

impl Host for FakeHost {
    fn cgroups(&self, pid: u32) -> Option<Vec<CgroupLine>> {
        let n = container_of(pid)?;
        CgroupLine::parse_all(&format!("0::/docker/c{n:06}\n")).ok()
    }
    fn start_time(&self, pid: u32) -> Option<u64> {
        Some(u64::from(pid))
    }
    fn kill(&self, _pid: u32, _start_time: u64) -> io::Result<Killed> {
        Ok(Killed::Gone)
    }
    fn set_frozen(&self, _cgroups: &[CgroupLine], _frozen: bool) -> io::Result<()> {
        Ok(())
    }
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
    fn lock_held(&self, _file: &Path, _range: std::ops::Range<u64>) -> io::Result<bool> {
        Ok(false)
    }
    fn lock_holders(&self, _pids: &[u32], _file: &Path, _range: std::ops::Range<u64>) -> io::Result<Vec<u32>> {
        Ok(Vec::new())
    }
    fn state_mounts(&self, pid: u32) -> Vec<u64> {
        container_of(pid).map(|n| vec![1000 + u64::from(n)]).unwrap_or_default()
    }
}

fn stats(name: &str, mut d: Vec<Duration>) {
    d.sort();
    let at = |q: f64| d[((d.len() - 1) as f64 * q) as usize];
    println!("{name:<28} median {:>9.1} µs   p90 {:>9.1} µs", at(0.5).as_secs_f64() * 1e6, at(0.9).as_secs_f64() * 1e6);
}

fn scrape(addr: std::net::SocketAddr) -> usize {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"));
    out.len()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, format!("state_dir = \"{}\"\n", state.display())).unwrap();
    let mut processes: BTreeMap<u32, Vec<GpuProcess>> = BTreeMap::new();
    let mut regions = Vec::new();
    let mut n = 0u32;
    for gpu in 0..2 {
        for s in 0..SLICES_PER_GPU {
            let slice = format!("slice{}", gpu * SLICES_PER_GPU + s);
            Limits {
                slice: slice.clone(),
                mode: Mode::Shim,
                gpu_uuid: uuid(gpu),
                gpu_index: gpu,
                memory_bytes: 2 * GIB,
                cores_percent: 3,
                cores_policy: CoresPolicy::Cap,
                priority: Priority::Normal,
                generation: 1,
            }
            .store(&state)
            .unwrap();
            let path = region::region_path(&state, &slice);
            Region::create(&path).unwrap();
            let r = Region::open(&path).unwrap();
            for _ in 0..CONTAINERS_PER_SLICE {
                ContainerRecord {
                    id: format!("c{n:06}{}", "0".repeat(57)),
                    slice: slice.clone(),
                    pid: 50_000 + n,
                    name: Some(format!("app-{n}")),
                    pod: None,
                    namespace: None,
                    cgroups: CgroupLine::parse_all(&format!("0::/docker/c{n:06}\n")).unwrap(),
                }
                .store(&state)
                .unwrap();
                let slot = r.register_in(1000 + u64::from(n)).unwrap();
                r.charge(slot, 256 << 20, 2 * GIB).unwrap().unwrap();
                processes.entry(gpu).or_default().push(GpuProcess { pid: 10_000 + n, used_bytes: 300 << 20 });
                n += 1;
            }
            regions.push(r);
        }
    }
    let config = Config::load(&config_path).unwrap();
    let driver = FakeDriver { processes, t: 0 };
    let mut guard = Guard::new(Box::new(driver), Arc::new(FakeHost), config, config_path, None);
    let server = Server::start("127.0.0.1:0".parse().unwrap(), guard.latest_metrics()).unwrap();

    let first = guard.pass();
    assert_eq!((first.snapshot.slices.len(), first.snapshot.processes.len()), (64, 256), "{:?}", first.snapshot.errors);
    let (mut passes, mut renders, mut scrapes) = (Vec::new(), Vec::new(), Vec::new());
    let mut size = 0;
    let records = ContainerRecord::list(&state).0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let report = guard.pass();
        passes.push(t.elapsed());
        let t = Instant::now();
        let text = metrics::render(&metrics::View {
            snapshot: &report.snapshot,
            regions: &report.regions,
            records: &records,
            tally: &metrics::Tally::default(),
            pass_seconds: 0.0,
            migs: &[],
        });
        renders.push(t.elapsed());
        size = text.len();
        let t = Instant::now();
        scrape(server.addr);
        scrapes.push(t.elapsed());
    }
    println!("metrics bench: 64 slices, 256 containers, 256 GPU processes, {ROUNDS} rounds");
    stats("guard pass (with render)", passes);
    stats("render alone", renders);
    stats("scrape (GET /metrics)", scrapes);
    println!("exposition: {size} bytes, {} lines", guard.latest_metrics().get().lines().count());
}
