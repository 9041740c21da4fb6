//! Virtual memory management: a physical allocation (`cuMemCreate`) is charged when it is
//! created and given back when the driver frees it, which is when nothing refers to it any
//! more (`cuda.h`):
//!
//! - a handle reference: the create, and each `cuMemRetainAllocationHandle` (the handle mapped
//!   at an address), each undone by one `cuMemRelease`;
//! - a mapping (`cuMemMap`, undone by `cuMemUnmap`, or by `cuMemAddressFree` of its range): the
//!   documented idiom maps, then releases at once, and the memory stays until the unmap;
//! - a POSIX file descriptor `cuMemExportToShareableHandle` handed out, while it is still open
//!   in this process (found by its number and what it refers to; looked at again whenever a
//!   charge would be refused and at every memory query).
//!
//! Memory shared between processes is charged once, to its creator: importing a descriptor
//! (`cuMemImportFromShareableHandle`) charges nothing. An import in the creating process of its
//! own export is one more handle reference to the creator's allocation when the descriptor is
//! recognisably one of its exports. What is not counted: memory that only another process (an
//! importer, or a descriptor passed on and closed here) keeps alive; the host guard counts it
//! from the driver's own figures.
//!
//! Every call takes what it may undo out of the book (or marks the allocation busy) before the
//! driver call and settles after it, so that no lock is held across the driver and an
//! allocation is never given back while a call that may add a reference to it is in flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{c_int, c_void};

use super::{book, charge, granularity, round_up, target};
use crate::driver::cuda;
use crate::ffi::*;
use crate::state::{State, state};

/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`.
const POSIX_FILE_DESCRIPTOR: u32 = 1;

/// Physical allocations charged in this process, their handles and their mappings.
#[derive(Debug, Default)]
pub struct Vmm {
    next: u64,
    /// By an id of ours: a handle value may name another allocation once its own is released.
    physical: HashMap<u64, Physical>,
    handles: HashMap<CUmemGenericAllocationHandle, HandleRef>,
    /// Mappings by start address.
    mappings: BTreeMap<CUdeviceptr, Mapping>,
    /// Allocations kept only by exported descriptors, looked at again by [`settle`].
    lingering: HashSet<u64>,
}

#[derive(Debug)]
struct Physical {
    slice: usize,
    bytes: u64,
    /// Handle references (summed over its handle values).
    refs: u32,
    mappings: u32,
    /// Driver calls in flight that may add a reference.
    busy: u32,
    exported: Vec<Exported>,
}

#[derive(Debug, Clone, Copy)]
struct HandleRef {
    id: u64,
    count: u32,
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    size: u64,
    id: u64,
}

/// A descriptor handed out by `cuMemExportToShareableHandle`: its number and what it referred
/// to, so that a closed number, or one reused for another file, is told from an open one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exported {
    fd: c_int,
    identity: (u64, u64),
}

impl Exported {
    fn of(fd: c_int) -> Option<Exported> {
        Some(Exported { fd, identity: identity(fd)? })
    }

    fn open(&self) -> bool {
        identity(self.fd) == Some(self.identity)
    }
}

/// The device and inode an open descriptor refers to.
fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: `stat` is plain data, valid zeroed.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer; fstat of any number is safe and fails for a closed one.
    (fd >= 0 && unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

impl Physical {
    /// Nothing refers to it: the driver has freed it.
    fn unused(&self) -> bool {
        self.kept_by_exports_at_most() && !self.exported.iter().any(Exported::open)
    }

    /// No handle reference, no mapping, no call in flight: only exported descriptors may
    /// keep it.
    fn kept_by_exports_at_most(&self) -> bool {
        self.refs == 0 && self.mappings == 0 && self.busy == 0
    }
}

/// A charge to give back: (slice, bytes).
type Freed = Vec<(usize, u64)>;

impl Vmm {
    /// A new allocation charged `bytes` to `slice`, with one reference under `handle`.
    fn created(&mut self, slice: usize, bytes: u64, handle: CUmemGenericAllocationHandle) -> Freed {
        self.next += 1;
        let id = self.next;
        self.physical.insert(id, Physical { slice, bytes, refs: 0, mappings: 0, busy: 0, exported: Vec::new() });
        self.add_ref(handle, id)
    }

    /// One more reference under `handle` to `id`. A handle value still recorded for another
    /// allocation is stale (the driver hands it out anew only once that one let it go).
    fn add_ref(&mut self, handle: CUmemGenericAllocationHandle, id: u64) -> Freed {
        let Some(p) = self.physical.get_mut(&id) else { return Vec::new() };
        p.refs += 1;
        let stale = match self.handles.get_mut(&handle) {
            Some(r) if r.id == id => {
                r.count += 1;
                None
            }
            _ => self.handles.insert(handle, HandleRef { id, count: 1 }),
        };
        let mut freed = Vec::new();
        if let Some(old) = stale {
            if let Some(p) = self.physical.get_mut(&old.id) {
                p.refs = p.refs.saturating_sub(old.count);
            }
            freed.extend(self.reap(old.id));
        }
        freed
    }

    /// Takes one reference of `handle` out, before a release; the allocation is busy until
    /// [`Vmm::done`].
    fn take_ref(&mut self, handle: CUmemGenericAllocationHandle) -> Option<u64> {
        let r = self.handles.get_mut(&handle)?;
        let id = r.id;
        r.count = r.count.saturating_sub(1);
        if r.count == 0 {
            self.handles.remove(&handle);
        }
        let p = self.physical.get_mut(&id)?;
        p.refs = p.refs.saturating_sub(1);
        p.busy += 1;
        Some(id)
    }

    /// Puts back a reference [`Vmm::take_ref`] took, the driver having refused the release.
    fn put_ref(&mut self, handle: CUmemGenericAllocationHandle, id: u64) {
        match self.handles.get_mut(&handle) {
            Some(r) if r.id == id => r.count += 1,
            Some(_) => return,
            None => {
                self.handles.insert(handle, HandleRef { id, count: 1 });
            }
        }
        if let Some(p) = self.physical.get_mut(&id) {
            p.refs += 1;
        }
    }

    /// Marks the allocation `handle` names busy for a call that may add to it.
    fn hold_handle(&mut self, handle: CUmemGenericAllocationHandle) -> Option<u64> {
        let id = self.handles.get(&handle)?.id;
        self.hold(id)
    }

    /// Marks the allocation mapped at `addr` (anywhere in a mapping) busy.
    fn hold_address(&mut self, addr: CUdeviceptr) -> Option<u64> {
        let (&start, m) = self.mappings.range(..=addr).next_back()?;
        let id = m.id;
        (addr < start.saturating_add(m.size)).then_some(())?;
        self.hold(id)
    }

    fn hold(&mut self, id: u64) -> Option<u64> {
        self.physical.get_mut(&id)?.busy += 1;
        Some(id)
    }

    /// The call that made `id` busy returned.
    fn done(&mut self, id: u64) -> Freed {
        if let Some(p) = self.physical.get_mut(&id) {
            p.busy = p.busy.saturating_sub(1);
        }
        self.reap(id).into_iter().collect()
    }

    /// A mapping of `id` at `ptr`. One recorded there already is stale.
    fn mapped(&mut self, ptr: CUdeviceptr, size: u64, id: u64) -> Freed {
        let Some(p) = self.physical.get_mut(&id) else { return Vec::new() };
        p.mappings += 1;
        let stale = self.mappings.insert(ptr, Mapping { size, id });
        stale.map(|old| self.unmapped(old.id)).unwrap_or_default()
    }

    fn unmapped(&mut self, id: u64) -> Freed {
        if let Some(p) = self.physical.get_mut(&id) {
            p.mappings = p.mappings.saturating_sub(1);
        }
        self.reap(id).into_iter().collect()
    }

    /// Takes the mappings that start in `[ptr, ptr + size)` out, before an unmap; their
    /// allocations are busy until [`Vmm::done`].
    fn take_mappings(&mut self, ptr: CUdeviceptr, size: u64) -> Vec<(CUdeviceptr, Mapping)> {
        let starts: Vec<CUdeviceptr> =
            self.mappings.range(ptr..ptr.saturating_add(size)).map(|(&start, _)| start).collect();
        let mut taken = Vec::with_capacity(starts.len());
        for start in starts {
            let Some(m) = self.mappings.remove(&start) else { continue };
            if let Some(p) = self.physical.get_mut(&m.id) {
                p.mappings = p.mappings.saturating_sub(1);
                p.busy += 1;
            }
            taken.push((start, m));
        }
        taken
    }

    /// Puts back a mapping [`Vmm::take_mappings`] took, the driver having refused.
    fn put_mapping(&mut self, start: CUdeviceptr, m: Mapping) {
        if let std::collections::btree_map::Entry::Vacant(v) = self.mappings.entry(start) {
            v.insert(m);
            if let Some(p) = self.physical.get_mut(&m.id) {
                p.mappings += 1;
            }
        }
    }

    /// Records a descriptor exported from `id`.
    fn exported(&mut self, id: u64, fd: c_int) {
        if let (Some(p), Some(e)) = (self.physical.get_mut(&id), Exported::of(fd)) {
            p.exported.push(e);
        }
    }

    /// The allocation that exported a descriptor referring to `identity`, if exactly one did.
    fn exporter_of(&self, identity: (u64, u64)) -> Option<u64> {
        let mut found = self.physical.iter().filter(|(_, p)| p.exported.iter().any(|e| e.identity == identity));
        let (&id, _) = found.next()?;
        found.next().is_none().then_some(id)
    }

    /// Removes `id` if the driver has freed it; remembers it if only exported descriptors
    /// keep it.
    fn reap(&mut self, id: u64) -> Option<(usize, u64)> {
        let p = self.physical.get(&id)?;
        if p.unused() {
            self.lingering.remove(&id);
            let p = self.physical.remove(&id)?;
            return Some((p.slice, p.bytes));
        }
        if p.kept_by_exports_at_most() {
            self.lingering.insert(id);
        }
        None
    }

    /// Removes the allocations kept only by exported descriptors that have all been closed.
    fn settle(&mut self) -> Freed {
        let ids: Vec<u64> = self.lingering.drain().collect();
        ids.into_iter().filter_map(|id| self.reap(id)).collect()
    }
}

fn give_back(s: &State, freed: Freed) {
    for (slice, bytes) in freed {
        s.slices[slice].uncharge(bytes);
    }
}

/// Gives back what allocations kept only by since-closed descriptors held; `true` if any.
pub fn settle(s: &State) -> bool {
    let freed = {
        let mut b = book(s);
        if b.vmm.lingering.is_empty() {
            return false;
        }
        b.vmm.settle()
    };
    let any = !freed.is_empty();
    give_back(s, freed);
    any
}

/// # Safety
/// `cuMemCreate`'s contract.
pub unsafe fn mem_create(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: u64,
) -> CUresult {
    let f = real!(cuMemCreate);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(handle, size, prop, flags) };
    if handle.is_null() || prop.is_null() || size == 0 {
        return pass();
    }
    // SAFETY: checked non-null; the caller passes a valid property struct.
    let location = unsafe { (*prop).location };
    if location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
        return pass();
    }
    let s = state();
    let (slice, dev) = slice_or_pass!(s, Some(location_id(&location)), pass());
    // The physical memory is what counts; mapping it adds nothing.
    let bytes = round_up(size as u64, granularity(s, dev));
    if let Err(r) = charge(s, slice, bytes) {
        return r.into();
    }
    let rc = pass();
    if rc != CUDA_SUCCESS {
        s.slices[slice].uncharge(bytes);
        return rc;
    }
    // SAFETY: the driver wrote the handle on success.
    let h = unsafe { *handle };
    let stale = book(s).vmm.created(slice, bytes, h);
    give_back(s, stale);
    rc
}

/// # Safety
/// `cuMemRelease`'s contract.
pub unsafe fn mem_release(handle: CUmemGenericAllocationHandle) -> CUresult {
    let f = real!(cuMemRelease);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(handle) };
    if !crate::state::active() {
        return pass();
    }
    let s = state();
    let taken = book(s).vmm.take_ref(handle);
    let rc = pass();
    let Some(id) = taken else { return rc };
    let freed = {
        let mut b = book(s);
        if rc != CUDA_SUCCESS {
            b.vmm.put_ref(handle, id);
        }
        b.vmm.done(id)
    };
    give_back(s, freed);
    rc
}

/// # Safety
/// `cuMemMap`'s contract.
pub unsafe fn mem_map(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: CUmemGenericAllocationHandle,
    flags: u64,
) -> CUresult {
    let f = real!(cuMemMap);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(ptr, size, offset, handle, flags) };
    if !crate::state::active() {
        return pass();
    }
    let s = state();
    let held = book(s).vmm.hold_handle(handle);
    let rc = pass();
    let Some(id) = held else { return rc };
    let freed = {
        let mut b = book(s);
        let mut freed = if rc == CUDA_SUCCESS { b.vmm.mapped(ptr, size as u64, id) } else { Vec::new() };
        freed.extend(b.vmm.done(id));
        freed
    };
    give_back(s, freed);
    rc
}

/// Unmaps `[ptr, ptr + size)` in the driver (`call`): the mappings there are taken out of the
/// book first and put back if the driver refuses.
fn unmapping(ptr: CUdeviceptr, size: usize, call: impl FnOnce() -> CUresult) -> CUresult {
    if !crate::state::active() {
        return call();
    }
    let s = state();
    let taken = book(s).vmm.take_mappings(ptr, size as u64);
    let rc = call();
    if taken.is_empty() {
        return rc;
    }
    let freed = {
        let mut b = book(s);
        let mut freed = Vec::new();
        for (start, m) in taken {
            if rc != CUDA_SUCCESS {
                b.vmm.put_mapping(start, m);
            }
            freed.extend(b.vmm.done(m.id));
        }
        freed
    };
    give_back(s, freed);
    rc
}

/// # Safety
/// `cuMemUnmap`'s contract.
pub unsafe fn mem_unmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    let f = real!(cuMemUnmap);
    // SAFETY: forwarded unchanged.
    unmapping(ptr, size, || unsafe { f(ptr, size) })
}

/// A reservation freed with mappings still in it: a driver that accepts that unmaps them.
///
/// # Safety
/// `cuMemAddressFree`'s contract.
pub unsafe fn mem_address_free(ptr: CUdeviceptr, size: usize) -> CUresult {
    let f = real!(cuMemAddressFree);
    // SAFETY: forwarded unchanged.
    unmapping(ptr, size, || unsafe { f(ptr, size) })
}

/// # Safety
/// `cuMemRetainAllocationHandle`'s contract.
pub unsafe fn mem_retain_allocation_handle(handle: *mut CUmemGenericAllocationHandle, addr: *mut c_void) -> CUresult {
    let f = real!(cuMemRetainAllocationHandle);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(handle, addr) };
    if handle.is_null() || !crate::state::active() {
        return pass();
    }
    let s = state();
    let held = book(s).vmm.hold_address(addr as CUdeviceptr);
    let rc = pass();
    let Some(id) = held else { return rc };
    let freed = {
        let mut b = book(s);
        // SAFETY: checked non-null; the driver wrote it on success.
        let mut freed = if rc == CUDA_SUCCESS { b.vmm.add_ref(unsafe { *handle }, id) } else { Vec::new() };
        freed.extend(b.vmm.done(id));
        freed
    };
    give_back(s, freed);
    rc
}

/// # Safety
/// `cuMemExportToShareableHandle`'s contract.
pub unsafe fn mem_export_to_shareable_handle(
    shareable: *mut c_void,
    handle: CUmemGenericAllocationHandle,
    handle_type: u32,
    flags: u64,
) -> CUresult {
    let f = real!(cuMemExportToShareableHandle);
    // SAFETY: forwarded unchanged.
    let pass = || unsafe { f(shareable, handle, handle_type, flags) };
    if shareable.is_null() || !crate::state::active() {
        return pass();
    }
    let s = state();
    let held = book(s).vmm.hold_handle(handle);
    let rc = pass();
    let Some(id) = held else { return rc };
    let freed = {
        let mut b = book(s);
        if rc == CUDA_SUCCESS && handle_type == POSIX_FILE_DESCRIPTOR {
            // SAFETY: checked non-null; for this handle type the driver wrote an `int` there.
            b.vmm.exported(id, unsafe { shareable.cast::<c_int>().read_unaligned() });
        }
        b.vmm.done(id)
    };
    give_back(s, freed);
    rc
}

/// The importer is not charged: the creator is. An import of this process's own export is one
/// more reference to its allocation.
///
/// # Safety
/// `cuMemImportFromShareableHandle`'s contract.
pub unsafe fn mem_import_from_shareable_handle(
    handle: *mut CUmemGenericAllocationHandle,
    os_handle: *mut c_void,
    handle_type: u32,
) -> CUresult {
    let f = real!(cuMemImportFromShareableHandle);
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(handle, os_handle, handle_type) };
    if rc != CUDA_SUCCESS || handle.is_null() || handle_type != POSIX_FILE_DESCRIPTOR || !crate::state::active() {
        return rc;
    }
    // For a POSIX descriptor the pointer-sized argument carries the `int`.
    let Some(identity) = c_int::try_from(os_handle as usize).ok().and_then(identity) else { return rc };
    let s = state();
    let freed = {
        let mut b = book(s);
        match b.vmm.exporter_of(identity) {
            // SAFETY: checked non-null; the driver wrote it on success.
            Some(id) => b.vmm.add_ref(unsafe { *handle }, id),
            None => Vec::new(),
        }
    };
    give_back(s, freed);
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 2 << 20;

    fn pipe() -> (c_int, c_int) {
        let mut fds = [0; 2];
        // SAFETY: a valid out array of two.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    }

    fn close(fd: c_int) {
        // SAFETY: a descriptor this test opened.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn release_after_map_frees_on_the_last_unmap() {
        let mut v = Vmm::default();
        assert!(v.created(0, 4 * G, 7).is_empty());
        let id = v.hold_handle(7).unwrap();
        assert!(v.mapped(0x1000_0000, 2 * G, id).is_empty());
        assert!(v.done(id).is_empty());
        let id = v.hold_handle(7).unwrap();
        assert!(v.mapped(0x2000_0000, 2 * G, id).is_empty());
        assert!(v.done(id).is_empty());
        let id = v.take_ref(7).unwrap();
        assert!(v.done(id).is_empty(), "released while mapped: still allocated");
        assert!(v.take_ref(7).is_none(), "the handle is gone");
        let taken = v.take_mappings(0x1000_0000, 2 * G);
        assert_eq!(taken.len(), 1);
        assert!(v.done(id).is_empty(), "one mapping left");
        let taken = v.take_mappings(0x2000_0000, 2 * G);
        assert_eq!(v.done(taken[0].1.id), vec![(0, 4 * G)]);
        assert!(v.physical.is_empty() && v.mappings.is_empty() && v.handles.is_empty());
    }

    #[test]
    fn a_refused_release_or_unmap_puts_everything_back() {
        let mut v = Vmm::default();
        v.created(1, G, 7);
        let id = v.hold_handle(7).unwrap();
        v.mapped(0x1000_0000, G, id);
        v.done(id);
        let id = v.take_ref(7).unwrap();
        v.put_ref(7, id);
        assert!(v.done(id).is_empty());
        let taken = v.take_mappings(0x1000_0000, G);
        for (start, m) in taken {
            v.put_mapping(start, m);
            assert!(v.done(m.id).is_empty());
        }
        let id = v.take_ref(7).unwrap();
        assert!(v.done(id).is_empty(), "still mapped");
        let taken = v.take_mappings(0, u64::MAX);
        assert_eq!(v.done(taken[0].1.id), vec![(1, G)]);
    }

    #[test]
    fn retained_handles_need_their_releases() {
        let mut v = Vmm::default();
        v.created(0, G, 7);
        let id = v.hold_handle(7).unwrap();
        v.mapped(0x1000_0000, G, id);
        v.done(id);
        // Anywhere inside the mapping; not past it.
        assert!(v.hold_address(0x1000_0000 + G).is_none());
        let id = v.hold_address(0x1000_0000 + G - 1).unwrap();
        assert!(v.add_ref(7, id).is_empty());
        v.done(id);
        for _ in 0..2 {
            let id = v.take_ref(7).unwrap();
            assert!(v.done(id).is_empty());
        }
        let taken = v.take_mappings(0x1000_0000, G);
        assert_eq!(v.done(taken[0].1.id), vec![(0, G)]);
    }

    #[test]
    fn a_release_in_flight_keeps_the_allocation_for_a_concurrent_map() {
        let mut v = Vmm::default();
        v.created(0, G, 7);
        // Thread A is mapping (busy) when thread B's release of the only reference returns.
        let mapping = v.hold_handle(7).unwrap();
        let releasing = v.take_ref(7).unwrap();
        assert!(v.done(releasing).is_empty(), "a map in flight keeps it");
        assert!(v.mapped(0x1000_0000, G, mapping).is_empty());
        assert!(v.done(mapping).is_empty(), "mapped now");
        let taken = v.take_mappings(0x1000_0000, G);
        assert_eq!(v.done(taken[0].1.id), vec![(0, G)]);
    }

    #[test]
    fn an_open_exported_descriptor_keeps_the_charge_until_closed() {
        let mut v = Vmm::default();
        v.created(0, G, 7);
        let (r, w) = pipe();
        let id = v.hold_handle(7).unwrap();
        v.exported(id, r);
        v.done(id);
        let id = v.take_ref(7).unwrap();
        assert!(v.done(id).is_empty(), "the descriptor is open");
        assert!(v.lingering.contains(&id));
        assert!(v.settle().is_empty());
        // A self-import of that descriptor is a reference again.
        assert_eq!(v.exporter_of(identity(r).unwrap()), Some(id));
        v.add_ref(9, id);
        assert!(v.settle().is_empty());
        let id = v.take_ref(9).unwrap();
        assert!(v.done(id).is_empty());
        close(r);
        close(w);
        assert_eq!(v.settle(), vec![(0, G)]);
        assert!(v.physical.is_empty() && v.lingering.is_empty());
    }

    #[test]
    fn a_reused_descriptor_number_is_not_the_export() {
        let mut v = Vmm::default();
        v.created(0, G, 7);
        let (r, w) = pipe();
        let id = v.hold_handle(7).unwrap();
        v.exported(id, r);
        v.done(id);
        close(w);
        // The same number, another file: dup2 replaces it in one step, so no other test's
        // thread can take the number in between.
        let (r2, w2) = pipe();
        // SAFETY: both are descriptors this test opened.
        assert_eq!(unsafe { libc::dup2(r2, r) }, r);
        close(r2);
        let id = v.take_ref(7).unwrap();
        assert_eq!(v.done(id), vec![(0, G)]);
        close(r);
        close(w2);
    }

    #[test]
    fn a_handle_value_recorded_again_returns_the_stale_charge() {
        let mut v = Vmm::default();
        v.created(0, G, 7);
        assert_eq!(v.created(0, 2 * G, 7), vec![(0, G)]);
        let id = v.take_ref(7).unwrap();
        assert_eq!(v.done(id), vec![(0, 2 * G)]);
    }
}
