//! What the interception library says of each slice, read from the slice's region once per
//! pass for the metrics and the log: the memory it charged (per slice and per container), the
//! GPU time it paced, the time it held processes back, and the allocations it refused for the
//! limit (per slice and per process).
//!
//! The region is written by containers, so nothing here decides anything: the guard's
//! enforcement reads only the driver and the host ([`super::observe`]). The read takes no lock
//! (every field is an atomic; liveness is `F_OFD_GETLK`, which never waits), so a process that
//! holds the region lock cannot stall a pass or a scrape. A region that fails its checks is one
//! error line and a `gpuslice_region_errors` sample, and the slice's other numbers stand.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use gpuslice_core::region::{self, Region};
use serde::Serialize;

/// One process's slot in a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotView {
    pub index: usize,
    /// Random per registration: with the index and the slice, names the process for good.
    pub token: u64,
    /// Its PID in its own PID namespace (the container's), as it wrote it.
    pub pid: u32,
    /// Its container, by the device number of its state mount (0: none).
    pub container_dev: u64,
    pub used_bytes: u64,
    pub refused: u64,
    /// Whether its process lives (a dead one's charge stays until it is reclaimed).
    pub alive: bool,
}

/// One slice's region, as read this pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RegionView {
    pub slice: String,
    /// Bytes the live and not yet reclaimed processes have charged.
    pub charged_bytes: u64,
    /// GPU time the slice's kernels took, ns, since the region was created.
    pub gpu_ns_total: u64,
    /// Time its processes were held back by pacing, ns.
    pub held_ns_total: u64,
    /// Allocations refused for the limit, since the region was created.
    pub refused_total: u64,
    /// Live processes registered in it.
    pub processes: usize,
    /// Active slots, live or not yet reclaimed.
    pub slots: Vec<SlotView>,
    /// Why it could not be read; the numbers above are then zero.
    pub error: Option<String>,
}

impl RegionView {
    /// Bytes charged per container (by the device number of its state mount).
    pub fn charged_by_container(&self) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for s in &self.slots {
            let e = out.entry(s.container_dev).or_insert(0u64);
            *e = e.saturating_add(s.used_bytes);
        }
        out
    }
}

/// Reads `slice`'s region under `state_dir`. A missing region is `None` (the slice was never
/// set up by `generate`); one that cannot be read is a view with `error`.
pub fn read(state_dir: &Path, slice: &str) -> Option<RegionView> {
    let path = region::region_path(state_dir, slice);
    if !path.exists() {
        return None;
    }
    let mut view = RegionView { slice: slice.to_owned(), ..RegionView::default() };
    let read = Region::open(&path).and_then(|r| {
        let c = r.compute();
        let totals = (
            c.gpu_ns_total.load(Ordering::Relaxed),
            c.held_ns_total.load(Ordering::Relaxed),
            c.refused_total.load(Ordering::Relaxed),
        );
        Ok((totals, r.usage()?, r.slots()?))
    });
    match read {
        Ok(((gpu, held, refused), charged, slots)) => {
            view.gpu_ns_total = gpu;
            view.held_ns_total = held;
            view.refused_total = refused;
            view.slots = slots
                .into_iter()
                .map(|s| SlotView {
                    index: s.index,
                    token: s.token,
                    pid: s.pid,
                    container_dev: s.container,
                    used_bytes: s.used,
                    refused: s.refused,
                    alive: s.alive,
                })
                .collect();
            view.processes = view.slots.iter().filter(|s| s.alive).count();
            view.charged_bytes = charged;
        }
        Err(e) => view.error = Some(e.to_string()),
    }
    Some(view)
}
