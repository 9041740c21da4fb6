//! Device time shared by every process: one timeline per GPU, on which every `busy` kernel of
//! every process takes its turn.
//!
//! Each GPU has a file `<state dir>/gpu<index>.timeline`, mapped shared into every process
//! and published like the memory state ([`crate::state`]): a header, a table of client
//! records, and a ring of busy intervals, atomics only ([`TimelineFile`], one definition). Times are `CLOCK_MONOTONIC` nanoseconds, a clock
//! every process and container on the machine shares.
//!
//! Running `d` ns of work that may start at `earliest` ([`DeviceTimeline::occupy`]) starts it
//! at `max(earliest, now, the device's idle time)`, makes the device idle `d` ns later, and
//! records the interval with the launching process's pid. Updates are serialised across
//! processes by an OFD lock on the file's first byte (and within a process by a mutex), so
//! one device runs one kernel at a time, whoever launched it.
//!
//! Utilisation is read from the ring: the share of the last second the device was busy, in
//! all and per process ([`DeviceTimeline::utilization`], [`DeviceTimeline::process_samples`]).
//!
//! Each process that queues work claims a client record and holds an OFD lock on it for as
//! long as it lives; its intervals name the record and the record's generation. When the
//! newest intervals belong to a client whose lock is gone (its process exited or was killed),
//! the part of them that lies in the future is dropped, as a real driver discards the pending
//! work of a context it tears down. So a dying process neither wedges the device nor leaves
//! it busy with work nobody waits for.
//!
//! NVML's per-process samples name processes as the asking process's PID namespace does, as a
//! real driver names them by host PID: a client that is still there is named by the kernel
//! through its mark in the GPU's holders file ([`crate::holders`]); the work of one that is
//! gone is named by the PID it recorded, if it recorded it in the asker's own PID namespace,
//! and left out otherwise.

use std::fs;
use std::mem::{offset_of, size_of};
use std::ops::Range;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use gpuslice_core::shared_struct;
use gpuslice_core::shm::Mapping;
use gpuslice_core::shm::atomic::{AtomicU64, Ordering};
use gpuslice_core::shm::lock::{self, RangeLock};

use crate::holders::{self, CLIENT_BASE, HolderFile};
use crate::state::{StateError, io_err, wait_lock};

/// First eight bytes of a timeline file.
const MAGIC: u64 = u64::from_le_bytes(*b"FAKEGPUT");
/// Layout version of [`TimelineFile`]; bump on any change.
const VERSION: u32 = 1;
/// Client records: at most this many processes queue work on one GPU at a time (more still
/// run, but their work is never dropped when they die).
pub const CLIENTS: usize = 1024;
/// Busy intervals kept per GPU. Back-to-back intervals of one process are merged, so this
/// bounds the intervals per second for which utilisation is exact, not the kernels.
pub const RECORDS: usize = 8192;
/// The byte whose lock serialises every read and update of the timeline.
const LOCK: Range<u64> = 0..1;
/// The window utilisation is measured over, as NVML's sample period on recent GPUs.
pub const WINDOW_NS: u64 = 1_000_000_000;
/// The period of `nvmlDeviceGetSamples`' utilisation samples: 1/6 s, as on recent GPUs.
pub const SAMPLE_NS: u64 = WINDOW_NS / 6;
/// Utilisation samples kept, as a real driver's buffer of the last 20 s.
pub const SAMPLES: usize = 120;

shared_struct! {
    /// The start of a timeline file. The first six fields are written before publication and
    /// only read (and validated) afterwards; the last two are updated under [`LOCK`].
    struct Header as HeaderValues {
        magic: u64,
        version: u32,
        index: u32,
        clients: u32,
        records: u32,
        client_offset: u32,
        record_offset: u32,
        /// When the device has finished everything queued on it so far.
        idle_at: u64,
        /// Intervals written so far, less those dropped; the newest is at `(kept − 1) % RECORDS`.
        kept: u64,
    }
}

shared_struct! {
    /// A process that queues work. `pid` is informational; liveness is the lock on the record's
    /// bytes. `generation` grows with each claim, so intervals of a previous holder are told
    /// apart.
    struct Client as ClientValues {
        pid: u32,
        generation: u32,
    }
}

shared_struct! {
    /// One busy interval `[start, end)` of the device. `client` is the client record's index + 1
    /// (0: none). `pid` is the launching process's PID in its own namespace, `pid_ns` (the low
    /// 32 bits of) that namespace's inode number, 0 if unknown.
    struct Record as RecordValues {
        start: u64,
        end: u64,
        pid: u32,
        client: u32,
        generation: u32,
        pid_ns: u32,
    }
}

shared_struct! {
    /// A timeline file: the one definition of its layout.
    struct TimelineFile {
        header: Header,
        /// Room for later header fields.
        reserved: [AtomicU64; (4096 - size_of::<Header>()) / 8],
        clients: [Client; CLIENTS],
        records: [Record; RECORDS],
    }
}

const CLIENT_OFFSET: usize = offset_of!(TimelineFile, clients);
const RECORD_OFFSET: usize = offset_of!(TimelineFile, records);
const _: () = assert!(size_of::<Header>() == 48 && size_of::<Client>() == 8 && size_of::<Record>() == 32);
const _: () = assert!(CLIENT_OFFSET == 4096 && RECORD_OFFSET == 4096 + 8 * CLIENTS);
const _: () = assert!(size_of::<TimelineFile>() == RECORD_OFFSET + 32 * RECORDS);

impl HeaderValues {
    fn new(index: u32) -> Self {
        HeaderValues {
            magic: MAGIC,
            version: VERSION,
            index,
            clients: CLIENTS as u32,
            records: RECORDS as u32,
            client_offset: CLIENT_OFFSET as u32,
            record_offset: RECORD_OFFSET as u32,
            idle_at: 0,
            kept: 0,
        }
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the timeline's clock.
pub fn now() -> u64 {
    clock(libc::CLOCK_MONOTONIC)
}

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// How long before a deadline [`sleep_until`] stops sleeping and starts polling: a sleeping
/// thread wakes tens of microseconds late (timer slack, scheduling), a real driver's
/// synchronisation spins by default, and a host that wakes late leaves the device idle.
const SPIN_NS: u64 = 200_000;

/// Wait until the timeline's clock reads `t` (at once if it has): sleep, then spin for the last
/// 200 µs. (Spinning, not yielding: on a busy machine a yield hands the CPU away for a whole
/// time slice.)
pub fn sleep_until(t: u64) {
    let wake = t.saturating_sub(SPIN_NS);
    if now() < wake {
        let ts = libc::timespec {
            tv_sec: (wake / 1_000_000_000) as libc::time_t,
            tv_nsec: (wake % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: an absolute sleep on CLOCK_MONOTONIC with a valid timespec; EINTR is retried.
        while unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) }
            == libc::EINTR
        {}
    }
    while now() < t {
        std::hint::spin_loop();
    }
}

/// A timeline time as the wall-clock microseconds NVML's samples carry.
pub fn to_unix_micros(t: u64) -> u64 {
    let (mono, real) = (now(), clock(libc::CLOCK_REALTIME));
    (real.saturating_add(t).saturating_sub(mono)) / 1000
}

/// Device time one process had in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessBusy {
    /// The pid as the process sees it (`getpid()`).
    pub pid: u32,
    /// The pid as the asking process's PID namespace names it, if it can: see the module doc.
    pub pid_here: Option<u32>,
    /// Nanoseconds of the window the device worked for it.
    pub busy_ns: u64,
    /// The start of its first work in the window, or the window's start.
    pub first_ns: u64,
    /// The end of its last work in the window, or the window's end.
    pub last_ns: u64,
}

/// One `nvmlSample_t` of GPU utilisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtilizationSample {
    /// Wall-clock microseconds (`CLOCK_REALTIME`): the end of the sample's period.
    pub timestamp_us: u64,
    /// Percent of the period the device was busy.
    pub percent: u32,
}

/// One `nvmlProcessUtilizationSample_t`, without the units NVML does not simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSample {
    pub pid: u32,
    /// Wall-clock microseconds (`CLOCK_REALTIME`), as NVML's "CPU timestamp".
    pub timestamp_us: u64,
    /// Percent of the last second the device worked for this process.
    pub sm_util: u32,
}

/// This process's client record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    index: u32,
    generation: u32,
}

/// One GPU's timeline, mapped into this process.
#[derive(Debug)]
pub struct DeviceTimeline {
    /// The file, kept open for the OFD locks, which belong to this open file description.
    map: Mapping<TimelineFile>,
    index: u32,
    /// This process's client record, claimed when it first queues work. The mutex also
    /// serialises this process's threads, which the OFD lock (shared by every thread using
    /// this file description) cannot.
    mine: Mutex<Option<Owner>>,
    /// The GPU's holders file, where this process marks its client record; `None` if it could
    /// not be opened.
    holders: Option<&'static HolderFile>,
    /// This process's PID namespace ([`holders::pid_namespace`]).
    pid_ns: u32,
}

impl DeviceTimeline {
    /// Open GPU `index`'s timeline in `dir`, creating both if they do not exist. Safe against
    /// other processes doing the same at the same time.
    pub fn open(dir: &Path, index: u32) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let path = dir.join(format!("gpu{index}.timeline"));
        let map = Mapping::<TimelineFile>::open_or_create(&path, 0o666, |f| f.header.store(&HeaderValues::new(index)))?;
        let holders = HolderFile::get(dir, index).ok();
        let timeline = Self { map, index, mine: Mutex::new(None), holders, pid_ns: holders::pid_namespace() };
        timeline.check_header()?;
        Ok(timeline)
    }

    fn check_header(&self) -> Result<(), StateError> {
        let h = self.header().load();
        let corrupt = |reason: String| Err(StateError::Corrupt { path: self.path().to_owned(), reason });
        if h.magic != MAGIC {
            return corrupt(format!("magic {:#x}", h.magic));
        }
        if h.version != VERSION {
            return corrupt(format!("layout version {}, this library reads {VERSION}", h.version));
        }
        let layout = (h.clients, h.records, h.client_offset, h.record_offset);
        if layout != (CLIENTS as u32, RECORDS as u32, CLIENT_OFFSET as u32, RECORD_OFFSET as u32) {
            return corrupt(format!("layout {layout:?}"));
        }
        if h.index != self.index {
            return corrupt(format!("made for GPU {}", h.index));
        }
        Ok(())
    }

    fn header(&self) -> &Header {
        &self.map.get().header
    }

    fn client(&self, i: usize) -> &Client {
        &self.map.get().clients[i]
    }

    /// Byte range of client record `i`, for its lock.
    fn client_range(&self, i: usize) -> Range<u64> {
        self.map.range_of(self.client(i))
    }

    fn record(&self, n: u64) -> &Record {
        &self.map.get().records[(n % RECORDS as u64) as usize]
    }

    /// The GPU's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The timeline file's path.
    pub fn path(&self) -> &Path {
        self.map.path()
    }

    /// Exclusive use of the timeline, against this process's threads and every other
    /// process, until the session is dropped. The future work of dead processes is dropped
    /// first. Hold one session at a time per thread; to hold several GPUs', take them in
    /// index order.
    pub fn lock(&self) -> Session<'_> {
        let mine = self.mine.lock().unwrap_or_else(PoisonError::into_inner);
        let lock = wait_lock(self.map.file(), LOCK);
        let mut session = Session { timeline: self, mine, _lock: lock, now: now() };
        session.drop_dead_work();
        session
    }

    /// Run `duration` ns of work on the device, starting no earlier than `earliest`, now and
    /// the end of the device's earlier work; returns `(start, done)`.
    pub fn occupy(&self, earliest: u64, duration: u64) -> (u64, u64) {
        self.lock().occupy(earliest, duration)
    }

    /// When the device will have finished everything queued on it.
    pub fn idle_at(&self) -> u64 {
        self.lock().idle_at()
    }

    /// Nanoseconds of `[from, to)` the device was (or is scheduled to be) busy.
    pub fn busy(&self, from: u64, to: u64) -> u64 {
        self.by_process(from, to).iter().map(|p| p.busy_ns).sum()
    }

    /// Device time in `[from, to)` per process; see [`Session::by_process`].
    pub fn by_process(&self, from: u64, to: u64) -> Vec<ProcessBusy> {
        self.lock().by_process(from, to)
    }

    /// `nvmlDeviceGetSamples`' GPU utilisation samples: one per [`SAMPLE_NS`] period that has
    /// ended, the newest [`SAMPLES`] of them, each stamped with the end of its period
    /// (wall-clock µs) and valued the percent of that period the device was busy; only those
    /// stamped after `last_seen_us`, oldest first.
    pub fn utilization_samples(&self, last_seen_us: u64) -> Vec<UtilizationSample> {
        let newest = now() / SAMPLE_NS * SAMPLE_NS;
        let oldest = newest.saturating_sub(SAMPLES as u64 * SAMPLE_NS);
        let busy = self.lock().busy_per_period(oldest, newest);
        busy.iter()
            .enumerate()
            .map(|(i, &b)| {
                let end = oldest + (i as u64 + 1) * SAMPLE_NS;
                UtilizationSample { timestamp_us: to_unix_micros(end), percent: percent_of(b, SAMPLE_NS) }
            })
            .filter(|s| s.timestamp_us > last_seen_us)
            .collect()
    }

    /// Percent of the last second the device was busy: `nvmlDeviceGetUtilizationRates`'s
    /// `gpu`.
    pub fn utilization(&self) -> u32 {
        let end = now();
        percent(self.busy(end.saturating_sub(WINDOW_NS), end))
    }

    /// `nvmlDeviceGetProcessUtilization`'s samples: one per process the device worked for in
    /// the last second, stamped with the end of that work (wall-clock µs), if later than
    /// `last_seen_us`.
    pub fn process_samples(&self, last_seen_us: u64) -> Vec<ProcessSample> {
        let end = now();
        let mut samples: Vec<ProcessSample> = self
            .by_process(end.saturating_sub(WINDOW_NS), end)
            .into_iter()
            .filter_map(|p| {
                let pid = p.pid_here?;
                Some(ProcessSample { pid, timestamp_us: to_unix_micros(p.last_ns), sm_util: percent(p.busy_ns) })
            })
            .filter(|s| s.timestamp_us > last_seen_us)
            .collect();
        samples.sort_by_key(|s| (s.timestamp_us, s.pid));
        samples
    }
}

/// `busy` nanoseconds of [`WINDOW_NS`], in whole percent (rounded, at most 100).
fn percent(busy: u64) -> u32 {
    percent_of(busy, WINDOW_NS)
}

/// `busy` nanoseconds of `window`, in whole percent (rounded, at most 100).
fn percent_of(busy: u64, window: u64) -> u32 {
    ((u128::from(busy) * 100 + u128::from(window / 2)) / u128::from(window.max(1))).min(100) as u32
}

impl Drop for DeviceTimeline {
    fn drop(&mut self) {
        // The mapping and the file go with `map` afterwards; closing the file drops this
        // process's locks, and with them the claim on its future work.
        if let Some(owner) = *self.mine.get_mut().unwrap_or_else(PoisonError::into_inner) {
            self.client(owner.index as usize).pid.store(0, Ordering::Release);
            if let Some(h) = self.holders {
                h.release(CLIENT_BASE + u64::from(owner.index));
            }
        }
    }
}

/// Exclusive use of one GPU's timeline; see [`DeviceTimeline::lock`].
#[derive(Debug)]
pub struct Session<'a> {
    timeline: &'a DeviceTimeline,
    mine: MutexGuard<'a, Option<Owner>>,
    _lock: Option<RangeLock<'a>>,
    now: u64,
}

impl Session<'_> {
    fn header(&self) -> &Header {
        self.timeline.header()
    }

    /// When the device will have finished everything queued on it.
    pub fn idle_at(&self) -> u64 {
        self.header().idle_at.load(Ordering::Acquire)
    }

    /// See [`DeviceTimeline::occupy`].
    pub fn occupy(&mut self, earliest: u64, duration: u64) -> (u64, u64) {
        let start = earliest.max(now()).max(self.idle_at());
        let done = start.saturating_add(duration);
        if duration > 0 {
            self.append(start, done);
            self.header().idle_at.store(done, Ordering::Release);
        }
        (start, done)
    }

    fn append(&mut self, start: u64, end: u64) {
        let owner = self.owner();
        let pid = std::process::id();
        let (client, generation) = owner.map_or((0, 0), |o| (o.index + 1, o.generation));
        let kept = self.header().kept.load(Ordering::Acquire);
        if kept > 0 {
            let last = self.timeline.record(kept - 1);
            let same = last.pid.load(Ordering::Acquire) == pid
                && last.client.load(Ordering::Acquire) == client
                && last.generation.load(Ordering::Acquire) == generation;
            if same && last.end.load(Ordering::Acquire) == start {
                last.end.store(end, Ordering::Release);
                return;
            }
        }
        let r = self.timeline.record(kept);
        r.start.store(start, Ordering::Release);
        r.end.store(end, Ordering::Release);
        r.pid.store(pid, Ordering::Release);
        r.client.store(client, Ordering::Release);
        r.generation.store(generation, Ordering::Release);
        r.pid_ns.store(self.timeline.pid_ns, Ordering::Release);
        self.header().kept.store(kept + 1, Ordering::Release);
    }

    /// This process's client record, claimed on first use; `None` if every record is held.
    fn owner(&mut self) -> Option<Owner> {
        if self.mine.is_none() {
            *self.mine = self.claim();
        }
        *self.mine
    }

    fn claim(&self) -> Option<Owner> {
        let t = self.timeline;
        let empty = (0..CLIENTS).filter(|&i| t.client(i).pid.load(Ordering::Acquire) == 0);
        let used = (0..CLIENTS).filter(|&i| t.client(i).pid.load(Ordering::Acquire) != 0);
        let index = empty.chain(used).find(|&i| {
            lock::try_lock(t.map.file(), t.client_range(i)).ok().flatten().is_some_and(|lock| {
                lock.keep();
                true
            })
        })?;
        let c = t.client(index);
        let generation = c.generation.load(Ordering::Acquire).wrapping_add(1);
        c.generation.store(generation, Ordering::Release);
        c.pid.store(std::process::id(), Ordering::Release);
        if let Some(h) = t.holders
            && let Err(err) = h.hold(CLIENT_BASE + index as u64)
        {
            eprintln!("fakegpu: {}: marking client record {index} as this process's: {err}", h.path().display());
        }
        Some(Owner { index: index as u32, generation })
    }

    /// Whether the process that queued `r` is still there to wait for it.
    fn alive(&self, r: &Record) -> bool {
        let client = r.client.load(Ordering::Acquire);
        let generation = r.generation.load(Ordering::Acquire);
        let Some(index) = client.checked_sub(1) else { return true };
        if *self.mine == Some(Owner { index, generation }) {
            return true;
        }
        let c = self.timeline.client(index as usize);
        c.generation.load(Ordering::Acquire) == generation
            && lock::held_elsewhere(self.timeline.map.file(), self.timeline.client_range(index as usize))
    }

    /// The PID the process that queued `r` has in this process's PID namespace: through its
    /// holders mark while it is still there, else the PID it recorded if it recorded it in
    /// this namespace. `None` when neither says.
    fn pid_here(&self, r: &Record) -> Option<u32> {
        let (client, generation) = (r.client.load(Ordering::Acquire), r.generation.load(Ordering::Acquire));
        let own_ns = self.timeline.pid_ns;
        if let Some(index) = client.checked_sub(1) {
            let current = self.timeline.client(index as usize).generation.load(Ordering::Acquire) == generation;
            if current
                && self.alive(r)
                && let Some(pid) = self.timeline.holders.and_then(|h| h.holder(CLIENT_BASE + u64::from(index)))
            {
                return Some(pid);
            }
        }
        let ns = r.pid_ns.load(Ordering::Acquire);
        (ns != 0 && ns == own_ns).then(|| r.pid.load(Ordering::Acquire))
    }

    /// Cut the newest intervals whose process is gone at now; drop those not yet started.
    fn drop_dead_work(&mut self) {
        let header = self.header();
        let mut kept = header.kept.load(Ordering::Acquire);
        let mut changed = false;
        while kept > 0 {
            let r = self.timeline.record(kept - 1);
            let (start, end) = (r.start.load(Ordering::Acquire), r.end.load(Ordering::Acquire));
            if end <= self.now || self.alive(r) {
                break;
            }
            changed = true;
            if start < self.now {
                r.end.store(self.now, Ordering::Release);
                break;
            }
            // Cleared, so that a reader reaching this slot from the other side of the ring
            // skips it.
            r.start.store(0, Ordering::Release);
            r.end.store(0, Ordering::Release);
            kept -= 1;
        }
        if changed {
            header.kept.store(kept, Ordering::Release);
            let idle = if kept > 0 { self.timeline.record(kept - 1).end.load(Ordering::Acquire) } else { 0 };
            header.idle_at.store(idle, Ordering::Release);
        }
    }

    /// Nanoseconds the device was busy in each [`SAMPLE_NS`] period of `[from, to)`, `from`
    /// a multiple of it.
    pub fn busy_per_period(&self, from: u64, to: u64) -> Vec<u64> {
        let periods = (to.saturating_sub(from) / SAMPLE_NS) as usize;
        let mut busy = vec![0u64; periods];
        let kept = self.header().kept.load(Ordering::Acquire);
        for n in (kept.saturating_sub(RECORDS as u64)..kept).rev() {
            let r = self.timeline.record(n);
            let (start, end) = (r.start.load(Ordering::Acquire), r.end.load(Ordering::Acquire));
            if end == 0 {
                continue;
            }
            if end <= from {
                break;
            }
            let (mut a, b) = (start.max(from), end.min(to));
            while a < b {
                let i = ((a - from) / SAMPLE_NS) as usize;
                let period_end = from + (i as u64 + 1) * SAMPLE_NS;
                let upto = b.min(period_end);
                if let Some(slot) = busy.get_mut(i) {
                    *slot += upto - a;
                }
                a = upto;
            }
        }
        busy
    }

    /// Device time in `[from, to)` per process, in pid order. A process is a client record
    /// (so two processes of one pid in different pid namespaces stay apart), or, for work
    /// queued without one, a pid.
    pub fn by_process(&self, from: u64, to: u64) -> Vec<ProcessBusy> {
        let kept = self.header().kept.load(Ordering::Acquire);
        let mut out: Vec<(ProcessBusy, (u32, u32))> = Vec::new();
        for n in (kept.saturating_sub(RECORDS as u64)..kept).rev() {
            let r = self.timeline.record(n);
            let (start, end) = (r.start.load(Ordering::Acquire), r.end.load(Ordering::Acquire));
            if end == 0 {
                continue;
            }
            if end <= from {
                break;
            }
            let (a, b) = (start.max(from), end.min(to));
            if a >= b {
                continue;
            }
            let pid = r.pid.load(Ordering::Acquire);
            let client = (r.client.load(Ordering::Acquire), r.generation.load(Ordering::Acquire));
            let who = if client.0 == 0 { (0, pid) } else { client };
            match out.iter_mut().find(|(p, w)| *w == who && p.pid == pid) {
                Some((p, _)) => {
                    p.busy_ns += b - a;
                    p.first_ns = p.first_ns.min(a);
                    p.last_ns = p.last_ns.max(b);
                }
                None => {
                    let pid_here = self.pid_here(r);
                    out.push((ProcessBusy { pid, pid_here, busy_ns: b - a, first_ns: a, last_ns: b }, who));
                }
            }
        }
        out.sort_by_key(|&(p, who)| (p.pid, who));
        out.into_iter().map(|(p, _)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn work_of_two_handles_queues_on_one_device() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceTimeline::open(dir.path(), 0).unwrap();
        let b = DeviceTimeline::open(dir.path(), 0).unwrap();
        let t0 = now();
        let (s1, d1) = a.occupy(t0, 50 * MS);
        let (s2, d2) = b.occupy(t0, 30 * MS);
        assert!(s1 >= t0 && d1 == s1 + 50 * MS);
        assert_eq!((s2, d2), (d1, d1 + 30 * MS), "the second waits for the first");
        assert_eq!(a.idle_at(), d2);
        // Work that may only start later leaves a gap.
        let (s3, _) = a.occupy(d2 + 10 * MS, MS);
        assert_eq!(s3, d2 + 10 * MS);
        assert_eq!(a.busy(s1, d2), 80 * MS);
        assert_eq!(a.busy(s1, s3 + MS), 81 * MS);
        assert_eq!(a.busy(s1 + 10 * MS, s1 + 20 * MS), 10 * MS);
        // Zero-length work takes its turn but records nothing.
        let (s4, d4) = b.occupy(0, 0);
        assert_eq!((s4, d4), (s3 + MS, s3 + MS));
        assert_eq!(b.busy(0, u64::MAX), 81 * MS);
    }

    #[test]
    fn back_to_back_work_of_one_process_is_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceTimeline::open(dir.path(), 0).unwrap();
        let t0 = now();
        // Queued ahead, so each piece starts where the last ended.
        for _ in 0..3 * RECORDS {
            a.occupy(t0, MS);
        }
        assert_eq!(a.header().kept.load(Ordering::Acquire), 1);
        assert_eq!(a.busy(0, u64::MAX), 3 * RECORDS as u64 * MS);
    }

    #[test]
    fn utilization_counts_the_last_second_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceTimeline::open(dir.path(), 1).unwrap();
        assert_eq!(a.utilization(), 0);
        assert!(a.process_samples(0).is_empty());
        // Half a second of work that ended just now.
        let t = now();
        {
            let mut s = a.lock();
            let start = t - 500 * MS;
            s.append(start, t);
            s.header().idle_at.store(t, Ordering::Release);
        }
        let u = a.utilization();
        assert!((49..=51).contains(&u), "{u}");
        let samples = a.process_samples(0);
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].pid, std::process::id());
        assert!((49..=51).contains(&samples[0].sm_util));
        assert!(a.process_samples(samples[0].timestamp_us).is_empty(), "nothing newer");
    }

    #[test]
    fn the_future_work_of_a_dead_process_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceTimeline::open(dir.path(), 0).unwrap();
        let t0 = now();
        let (_, done) = a.occupy(t0, 3600 * 1000 * MS);
        let b = DeviceTimeline::open(dir.path(), 0).unwrap();
        assert_eq!(b.idle_at(), done, "an hour of work ahead");
        drop(a);
        let idle = b.idle_at();
        assert!(idle < now() + MS, "the work of a gone process is dropped");
        let (s, _) = b.occupy(0, MS);
        assert!(s < now() + MS);
        assert!(b.busy(t0, now()) < 1000 * MS);
    }

    #[test]
    fn refuses_a_file_of_another_layout() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("gpu0.timeline"), b"junk").unwrap();
        assert!(matches!(DeviceTimeline::open(dir.path(), 0), Err(StateError::Corrupt { .. })));
        drop(DeviceTimeline::open(dir.path(), 1).unwrap());
        fs::rename(dir.path().join("gpu1.timeline"), dir.path().join("gpu2.timeline")).unwrap();
        assert!(matches!(DeviceTimeline::open(dir.path(), 2), Err(StateError::Corrupt { .. })));
    }
}
