//! Events on the host's log: a process that had an allocation refused for its slice's memory
//! limit is logged once, with the slice, its container and its PID, so that
//! `journalctl -u gpuslice` says who hit a limit and when.
//!
//! The interception library counts each refusal in the process's slot of the slice's region
//! (`refused`); each pass the guard reads the slots ([`super::regions`]) and logs every process
//! whose count went from zero to more, once per process (a slot's registration token names the
//! process: a slot handed to another process is a new one). The region is the container's to
//! write, so a line is a report of what the slice's processes say, never a ground for action;
//! a container that scribbles counts into its own region gets lines about itself, bounded by
//! its slots (1024 per slice).

use std::collections::{HashMap, HashSet};

use gpuslice_core::containers::ContainerRecord;

use super::host::Host;
use super::observe::{Owner, Snapshot};
use super::regions::RegionView;

/// The processes already logged: (slice, slot, token).
#[derive(Debug, Default)]
pub struct RefusedLog {
    seen: HashSet<(String, usize, u64)>,
}

impl RefusedLog {
    /// Logs each process of `regions` newly seen with refusals; returns the lines.
    /// `devices`: each container id's state mount devices, which its slots are tagged with.
    pub fn check(
        &mut self,
        host: &dyn Host,
        snap: &Snapshot,
        regions: &[RegionView],
        records: &[ContainerRecord],
        devices: &HashMap<String, Vec<u64>>,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        let mut now = HashSet::new();
        for region in regions.iter().filter(|r| r.error.is_none()) {
            let limit = snap.slice(&region.slice).map(|s| s.info.memory_bytes);
            for slot in region.slots.iter().filter(|s| s.refused > 0) {
                let key = (region.slice.clone(), slot.index, slot.token);
                if !self.seen.contains(&key) {
                    lines.push(line(host, snap, region, slot, limit, records, devices));
                }
                now.insert(key);
            }
        }
        for l in &lines {
            tracing::warn!("{l}");
        }
        self.seen = now;
        lines
    }
}

fn line(
    host: &dyn Host,
    snap: &Snapshot,
    region: &RegionView,
    slot: &super::regions::SlotView,
    limit: Option<u64>,
    records: &[ContainerRecord],
    devices: &HashMap<String, Vec<u64>>,
) -> String {
    let container = records.iter().find(|r| {
        r.slice == region.slice
            && devices.get(&r.id).is_some_and(|d| slot.container_dev != 0 && d.contains(&slot.container_dev))
    });
    // The host PID: one of the container's processes the driver lists whose innermost PID is the
    // slot's.
    let host_pid = container.and_then(|c| {
        snap.processes_of(&region.slice)
            .filter(|p| matches!(&p.owner, Owner::Slice { container, .. } if container == &c.id))
            .find(|p| host.inner_pid(p.pid) == Some(slot.pid))
            .map(|p| p.pid)
    });
    let who = match container {
        Some(c) => format!("container {}", c.display_name()),
        None => "a process outside any known container".to_owned(),
    };
    let pid = match host_pid {
        Some(h) => format!("pid {h} (pid {} in its container)", slot.pid),
        None => format!("pid {} in its container", slot.pid),
    };
    let limit = limit.map_or_else(String::new, |l| format!(" of {}", gpuslice_core::units::ByteSize(l)));
    format!(
        "{}: {who}, {pid}: an allocation was refused for the slice's memory limit{limit} ({} refused so far, {} charged now)",
        region.slice,
        slot.refused,
        gpuslice_core::units::ByteSize(region.charged_bytes),
    )
}
