//! Device memory: charged to the GPU's shared state at the driver's 2 MiB granularity and
//! backed by host memory, so that copies really move bytes and an address is a pointer this
//! process can read.
//!
//! - `cuMemAlloc*` and arrays belong to the context that made them.
//! - Stream-ordered allocations come from a pool. A pool hands out whole granules, keeps
//!   what is freed to it reserved (still charged to the device) for reuse, and gives it
//!   back when trimmed or destroyed, and, as the real driver does, down to the pool's release
//!   threshold (0 unless set) when a stream, an event or a context is synchronised. A
//!   `cuMemAllocAsync`/`cuMemFreeAsync` on a capturing stream makes a memory node of the
//!   graph being captured instead (graph memory, [`graph_memory`](super::graph_memory)).
//! - Virtual memory management: `cuMemCreate` makes a physical allocation (a memfd, charged
//!   at once), `cuMemAddressReserve` reserves address space (charged nothing), `cuMemMap`
//!   maps the memfd there with no access, and `cuMemSetAccess` opens it up. As in the real
//!   driver, an allocation lives while anything refers to it: a handle reference (the create
//!   or import, and each `cuMemRetainAllocationHandle`, each undone by one `cuMemRelease`), a
//!   mapping, or a POSIX file descriptor `cuMemExportToShareableHandle` handed out that is
//!   still open in this process. `cuMemImportFromShareableHandle` of such a descriptor gives
//!   another process (or this one) a handle to the same memfd; the device memory stays
//!   charged to the process that created it (see the README for what that leaves out).
//!
//! Every allocation call counts towards `FAKEGPU_FAIL_ALLOC_AT`. With
//! `FAKEGPU_REUSE_ADDRESSES=1`, an address `cuMemFree` gave back is handed out again by the
//! next `cuMemAlloc*` of the same rounded size (the most recently freed first), as a real
//! driver's address allocator often does, so that tests can make a reuse happen.

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_int;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use super::error::{
    CuResult, HOST_MEMORY_ALREADY_REGISTERED, HOST_MEMORY_NOT_REGISTERED, INVALID_HANDLE, INVALID_VALUE, NOT_FOUND,
    NOT_SUPPORTED, OUT_OF_MEMORY,
};
use super::types::*;
use super::{Driver, FAIL_ALLOC_AT_ENV, Handle, REUSE_ADDRESSES_ENV, Registry, context, driver, launch, new_handle};
use crate::state::{DeviceState, Simulator};

/// What `cuMemGetAllocationGranularity` answers, and the unit memory is charged in.
pub const GRANULARITY: u64 = 2 << 20;
/// Row alignment of `cuMemAllocPitch`.
pub const PITCH_ALIGNMENT: u64 = 512;

/// `size` rounded up to whole granules; `None` if that overflows.
pub fn granules(size: u64) -> Option<u64> {
    size.checked_next_multiple_of(GRANULARITY)
}

/// Device memory taken from a GPU's shared state, given back on drop.
#[derive(Debug)]
pub(crate) struct Charge {
    device: &'static DeviceState,
    bytes: u64,
}

impl Charge {
    /// Take `bytes` without counting towards `FAKEGPU_FAIL_ALLOC_AT` (contexts).
    pub fn uncounted(device: &'static DeviceState, bytes: u64) -> CuResult<Self> {
        device.try_reserve(bytes).map_err(|_| OUT_OF_MEMORY)?;
        Ok(Self { device, bytes })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.device.release(self.bytes);
    }
}

/// `CU_MEMHOSTALLOC_PORTABLE | DEVICEMAP | WRITECOMBINED`.
const HOST_ALLOC_FLAGS: u32 = 0x1 | 0x2 | 0x4;
/// `CU_MEMHOSTREGISTER_PORTABLE | DEVICEMAP | IOMEMORY | READ_ONLY`.
const HOST_REGISTER_FLAGS: u32 = 0x1 | 0x2 | 0x4 | 0x8;

/// A private anonymous mapping standing in for device memory. Pages are only backed once
/// touched, so a large allocation costs address space, not RAM.
#[derive(Debug)]
pub(crate) struct HostMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value and unmapped only on drop; moving the owner to
// another thread moves nothing but the address.
unsafe impl Send for HostMemory {}

impl HostMemory {
    fn map(len: u64, prot: c_int) -> CuResult<Self> {
        let len = usize::try_from(len).map_err(|_| OUT_OF_MEMORY)?;
        // SAFETY: a fresh anonymous mapping; the kernel picks the address.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(OUT_OF_MEMORY);
        }
        let ptr = NonNull::new(addr.cast()).ok_or(OUT_OF_MEMORY)?;
        Ok(Self { ptr, len })
    }

    /// Readable, writable, zeroed memory.
    pub(crate) fn new(len: u64) -> CuResult<Self> {
        Self::map(len, libc::PROT_READ | libc::PROT_WRITE)
    }

    /// Inaccessible address space, aligned to `align` (a power of two).
    fn reserve(len: u64, align: u64) -> CuResult<Self> {
        let mut over = Self::map(len.checked_add(align).ok_or(OUT_OF_MEMORY)?, libc::PROT_NONE)?;
        let start = over.addr().next_multiple_of(align);
        let (head, tail) = (start - over.addr(), over.len as u64 - (start - over.addr()) - len);
        // SAFETY: both ranges lie inside the mapping `over` owns and nobody refers to them.
        unsafe {
            libc::munmap(over.ptr.as_ptr().cast(), head as usize);
        }
        // SAFETY: as above; the tail starts after the `len` bytes kept.
        unsafe {
            libc::munmap((start + len) as *mut libc::c_void, tail as usize);
        }
        over.ptr = NonNull::new(start as *mut u8).ok_or(OUT_OF_MEMORY)?;
        over.len = len as usize;
        Ok(over)
    }

    pub(crate) fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping this value owns; nothing refers to it past the owner.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Charged, host-backed memory of whole granules.
#[derive(Debug)]
struct Block {
    memory: HostMemory,
    charge: Charge,
}

impl Block {
    fn new(device: &'static DeviceState, size: u64) -> CuResult<Self> {
        let rounded = granules(size).ok_or(OUT_OF_MEMORY)?;
        let charge = Charge::uncounted(device, rounded)?;
        let memory = HostMemory::new(rounded)?;
        Ok(Self { memory, charge })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Context(Handle),
    Pool(Handle),
}

#[derive(Debug)]
struct Allocation {
    /// The size asked for; copies must stay inside it.
    size: u64,
    block: Block,
    owner: Owner,
}

#[derive(Debug)]
struct Pool {
    device: u32,
    default: bool,
    /// Freed blocks, still charged to the device.
    free: Vec<Block>,
    reserved: u64,
    reserved_high: u64,
    used: u64,
    used_high: u64,
    /// `REUSE_FOLLOW_EVENT_DEPENDENCIES`, `REUSE_ALLOW_OPPORTUNISTIC`,
    /// `REUSE_ALLOW_INTERNAL_DEPENDENCIES`: kept and answered back.
    reuse: [c_int; 3],
    /// `RELEASE_THRESHOLD`: what the pool keeps of freed memory at a synchronisation.
    release_threshold: u64,
}

/// A `cuMemCreate` allocation, or an imported one.
#[derive(Debug)]
struct Physical {
    size: u64,
    /// The device and handle types `cuMemCreate` was asked for
    /// (`cuMemGetAllocationPropertiesFromHandle`); an import answers device 0 and a POSIX
    /// file descriptor (the exporter's device is not recorded in what it shares).
    device: u32,
    handle_types: CUmemAllocationHandleType,
    fd: OwnedFd,
    /// The device memory, held by the process that created the allocation (an import holds
    /// none) until nothing refers to the allocation.
    _charge: Option<Charge>,
    /// Handle references: the create or import, and each `cuMemRetainAllocationHandle`. At
    /// zero the handle is invalid, though mappings or exported descriptors may keep the
    /// memory.
    refs: u32,
    mappings: usize,
    /// Created with `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR` among its handle types.
    exportable: bool,
    /// The descriptors `cuMemExportToShareableHandle` handed out, which keep the memory while
    /// they are open.
    exported: Vec<Exported>,
}

/// A descriptor handed out by `cuMemExportToShareableHandle`: its number and what it
/// referred to, so a closed (or reused) number is told apart from an open one.
#[derive(Debug, Clone, Copy)]
struct Exported {
    fd: c_int,
    dev: u64,
    ino: u64,
}

impl Exported {
    fn of(fd: c_int) -> Option<Self> {
        let (dev, ino) = identity(fd)?;
        Some(Self { fd, dev, ino })
    }

    fn open(&self) -> bool {
        identity(self.fd) == Some((self.dev, self.ino))
    }
}

/// The device and inode of an open descriptor.
fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: `stat` is plain data; fstat writes it for an open descriptor and fails otherwise.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer; any descriptor number is safe to ask about.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

impl Physical {
    /// Nothing refers to the allocation any more: its memory goes.
    fn unused(&self) -> bool {
        self.refs == 0 && self.mappings == 0 && !self.exported.iter().any(Exported::open)
    }
}

/// One `cuMemMap` of (part of) a physical allocation.
#[derive(Debug)]
struct Mapping {
    size: u64,
    handle: u64,
    access: CUmemAccess_flags,
}

/// Page-locked host memory: `cuMemHostAlloc` (owned here) or `cuMemHostRegister` (the
/// caller's). Host RAM, charged to no device.
#[derive(Debug)]
struct Host {
    len: u64,
    flags: u32,
    /// `None` for registered memory.
    _memory: Option<HostMemory>,
}

#[derive(Debug)]
struct Array {
    ctx: Handle,
    mipmapped: bool,
    _charge: Charge,
}

#[derive(Debug, Default)]
pub(crate) struct Memory {
    allocations: BTreeMap<u64, Allocation>,
    pools: HashMap<Handle, Pool>,
    default_pools: Vec<Handle>,
    /// Each device's current pool (`cuDeviceSetMemPool`), its default one unless set.
    current_pools: Vec<Handle>,
    physical: HashMap<u64, Physical>,
    next_physical: u64,
    reservations: BTreeMap<u64, HostMemory>,
    mappings: BTreeMap<u64, Mapping>,
    arrays: HashMap<Handle, Array>,
    host: BTreeMap<u64, Host>,
    /// `FAKEGPU_FAIL_ALLOC_AT`: the 1-based allocation call that fails.
    fail_at: Option<u64>,
    calls: u64,
    /// `FAKEGPU_REUSE_ADDRESSES`: address ranges `cuMemFree` gave back, newest last.
    reuse: Option<Vec<HostMemory>>,
}

/// Freed ranges kept for reuse at most.
const REUSE_KEPT: usize = 64;

impl Memory {
    pub fn new(devices: usize) -> Self {
        let fail_at = std::env::var(FAIL_ALLOC_AT_ENV).ok().and_then(|v| match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!("fakegpu: ignoring {FAIL_ALLOC_AT_ENV}={v}: expected a positive whole number");
                None
            }
        });
        let reuse = match std::env::var(REUSE_ADDRESSES_ENV).as_deref() {
            Err(_) | Ok("" | "0") => None,
            Ok("1") => Some(Vec::new()),
            Ok(v) => {
                eprintln!("fakegpu: ignoring {REUSE_ADDRESSES_ENV}={v}: expected 0 or 1");
                None
            }
        };
        let mut memory = Self { fail_at, reuse, ..Self::default() };
        for device in 0..devices {
            let pool = new_handle();
            memory.pools.insert(pool, Pool::new(device as u32, true));
            memory.default_pools.push(pool);
            memory.current_pools.push(pool);
        }
        memory
    }

    /// Count one allocation call; the one `FAKEGPU_FAIL_ALLOC_AT` names fails. Also lets go
    /// of physical allocations whose last exported descriptor was closed since.
    fn count_call(&mut self) -> CuResult {
        self.settle_physical();
        self.calls += 1;
        if self.fail_at == Some(self.calls) { Err(OUT_OF_MEMORY) } else { Ok(()) }
    }

    /// `cuMemAlloc`, `cuMemAllocPitch`, `cuMemAllocManaged`: `size` bytes for `ctx`.
    pub fn alloc(&mut self, device: &'static DeviceState, ctx: Handle, size: u64) -> CuResult<u64> {
        if size == 0 {
            return Err(INVALID_VALUE);
        }
        self.count_call()?;
        let block = match self.reused(device, size)? {
            Some(block) => block,
            None => Block::new(device, size)?,
        };
        let addr = block.memory.addr();
        self.allocations.insert(addr, Allocation { size, block, owner: Owner::Context(ctx) });
        Ok(addr)
    }

    /// With `FAKEGPU_REUSE_ADDRESSES`: the most recently freed range of `size` rounded,
    /// zeroed and charged again.
    fn reused(&mut self, device: &'static DeviceState, size: u64) -> CuResult<Option<Block>> {
        let rounded = granules(size).ok_or(OUT_OF_MEMORY)?;
        let Some(kept) = self.reuse.as_mut() else { return Ok(None) };
        let Some(i) = kept.iter().rposition(|m| m.len as u64 == rounded) else { return Ok(None) };
        let charge = Charge::uncounted(device, rounded)?;
        let memory = kept.remove(i);
        // SAFETY: a private anonymous mapping this value owns: its pages read as zero again.
        unsafe { libc::madvise(memory.ptr.as_ptr().cast(), memory.len, libc::MADV_DONTNEED) };
        Ok(Some(Block { memory, charge }))
    }

    /// `cuMemFree`, and `cuMemFreeAsync` (which is immediate here): the start of an
    /// allocation; pool allocations go back to their pool.
    pub fn free(&mut self, ptr: u64) -> CuResult {
        let allocation = self.allocations.remove(&ptr).ok_or(INVALID_VALUE)?;
        match allocation.owner {
            Owner::Pool(pool) => {
                if let Some(pool) = self.pools.get_mut(&pool) {
                    pool.used -= allocation.block.charge.bytes();
                    pool.free.push(allocation.block);
                }
            }
            Owner::Context(_) => {
                if let Some(kept) = self.reuse.as_mut() {
                    let Block { memory, charge } = allocation.block;
                    drop(charge);
                    if kept.len() == REUSE_KEPT {
                        kept.remove(0);
                    }
                    kept.push(memory);
                }
            }
        }
        Ok(())
    }

    /// The default pool of `device`.
    pub fn default_pool(&self, device: u32) -> Handle {
        self.default_pools[device as usize]
    }

    /// The current pool of `device`: what `cuMemAllocAsync` takes from.
    pub fn current_pool(&self, device: u32) -> Handle {
        self.current_pools[device as usize]
    }

    /// `cuDeviceSetMemPool`: a pool of that device.
    pub fn set_current_pool(&mut self, device: u32, pool: Handle) -> CuResult {
        if self.pool_device(pool)? != device {
            return Err(INVALID_VALUE);
        }
        self.current_pools[device as usize] = pool;
        Ok(())
    }

    pub fn pool_device(&self, pool: Handle) -> CuResult<u32> {
        self.pools.get(&pool).map(|p| p.device).ok_or(INVALID_VALUE)
    }

    pub fn create_pool(&mut self, device: u32) -> Handle {
        let pool = new_handle();
        self.pools.insert(pool, Pool::new(device, false));
        pool
    }

    /// `cuMemPoolDestroy`: frees what the pool holds; allocations still out are freed when
    /// they are. A device whose current pool it was goes back to its default one.
    pub fn destroy_pool(&mut self, pool: Handle) -> CuResult {
        match self.pools.get(&pool) {
            Some(p) if !p.default => {}
            _ => return Err(INVALID_VALUE),
        }
        self.pools.remove(&pool);
        for (current, default) in self.current_pools.iter_mut().zip(&self.default_pools) {
            if *current == pool {
                *current = *default;
            }
        }
        Ok(())
    }

    /// `cuMemAllocAsync`/`cuMemAllocFromPoolAsync`: a freed block that fits, or a new one.
    pub fn alloc_from_pool(&mut self, device: &'static DeviceState, pool: Handle, size: u64) -> CuResult<u64> {
        if size == 0 {
            return Err(INVALID_VALUE);
        }
        let rounded = granules(size).ok_or(OUT_OF_MEMORY)?;
        if !self.pools.contains_key(&pool) {
            return Err(INVALID_VALUE);
        }
        self.count_call()?;
        let p = self.pools.get_mut(&pool).ok_or(INVALID_VALUE)?;
        let fit = p
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.charge.bytes() >= rounded)
            .min_by_key(|(_, b)| b.charge.bytes())
            .map(|(i, _)| i);
        let block = match fit {
            Some(i) => p.free.swap_remove(i),
            None => {
                let block = Block::new(device, size)?;
                p.reserved += block.charge.bytes();
                p.reserved_high = p.reserved_high.max(p.reserved);
                block
            }
        };
        p.used += block.charge.bytes();
        p.used_high = p.used_high.max(p.used);
        let addr = block.memory.addr();
        self.allocations.insert(addr, Allocation { size, block, owner: Owner::Pool(pool) });
        Ok(addr)
    }

    /// `cuMemPoolTrimTo`: free unused blocks until the pool holds at most `keep` bytes.
    pub fn trim_pool(&mut self, pool: Handle, keep: u64) -> CuResult {
        let p = self.pools.get_mut(&pool).ok_or(INVALID_VALUE)?;
        p.free.sort_by_key(|b| b.charge.bytes());
        while p.reserved > keep {
            let Some(block) = p.free.pop() else { break };
            p.reserved -= block.charge.bytes();
        }
        Ok(())
    }

    /// At a synchronisation (stream, event, context): every pool gives back what it holds
    /// unused beyond its release threshold.
    pub fn trim_at_sync(&mut self) {
        let pools: Vec<(Handle, u64)> = self
            .pools
            .iter()
            .filter(|(_, p)| p.reserved > p.release_threshold && !p.free.is_empty())
            .map(|(&h, p)| (h, p.release_threshold))
            .collect();
        for (pool, keep) in pools {
            let _ = self.trim_pool(pool, keep);
        }
    }

    /// `cuMemPoolGetAttribute` for the attributes kept as 64-bit counters.
    pub fn pool_counter(&self, pool: Handle, attribute: CUmemPool_attribute) -> CuResult<u64> {
        let p = self.pools.get(&pool).ok_or(INVALID_VALUE)?;
        match attribute {
            CU_MEMPOOL_ATTR_RELEASE_THRESHOLD => Ok(p.release_threshold),
            CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT => Ok(p.reserved),
            CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH => Ok(p.reserved_high),
            CU_MEMPOOL_ATTR_USED_MEM_CURRENT => Ok(p.used),
            CU_MEMPOOL_ATTR_USED_MEM_HIGH => Ok(p.used_high),
            _ => Err(INVALID_VALUE),
        }
    }

    /// A reuse policy (`REUSE_*`, an `int`).
    pub fn pool_reuse(&self, pool: Handle, attribute: CUmemPool_attribute) -> CuResult<c_int> {
        let p = self.pools.get(&pool).ok_or(INVALID_VALUE)?;
        Ok(p.reuse[reuse_index(attribute)?])
    }

    /// `cuMemPoolSetAttribute` of a reuse policy: 0 or 1.
    pub fn set_pool_reuse(&mut self, pool: Handle, attribute: CUmemPool_attribute, value: c_int) -> CuResult {
        let i = reuse_index(attribute)?;
        let p = self.pools.get_mut(&pool).ok_or(INVALID_VALUE)?;
        if !matches!(value, 0 | 1) {
            return Err(INVALID_VALUE);
        }
        p.reuse[i] = value;
        Ok(())
    }

    /// `cuMemPoolSetAttribute` of a `cuuint64_t`: the release threshold, or 0 to reset a
    /// high-water mark to the current value.
    pub fn set_pool_counter(&mut self, pool: Handle, attribute: CUmemPool_attribute, value: u64) -> CuResult {
        let p = self.pools.get_mut(&pool).ok_or(INVALID_VALUE)?;
        match attribute {
            CU_MEMPOOL_ATTR_RELEASE_THRESHOLD => p.release_threshold = value,
            CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH if value == 0 => p.reserved_high = p.reserved,
            CU_MEMPOOL_ATTR_USED_MEM_HIGH if value == 0 => p.used_high = p.used,
            _ => return Err(INVALID_VALUE),
        }
        Ok(())
    }

    /// `cuMemCreate`: `size` must be whole granules.
    pub fn create_physical(
        &mut self,
        device: &'static DeviceState,
        size: u64,
        handle_types: CUmemAllocationHandleType,
    ) -> CuResult<u64> {
        if size == 0 || !size.is_multiple_of(GRANULARITY) {
            return Err(INVALID_VALUE);
        }
        self.count_call()?;
        let charge = Charge::uncounted(device, size)?;
        let fd = memfd(size).map_err(|err| {
            eprintln!("fakegpu: cuMemCreate: {err}");
            OUT_OF_MEMORY
        })?;
        Ok(self.add_physical(Physical {
            size,
            device: device.index(),
            handle_types,
            fd,
            _charge: Some(charge),
            refs: 1,
            mappings: 0,
            exportable: handle_types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR != 0,
            exported: Vec::new(),
        }))
    }

    fn add_physical(&mut self, physical: Physical) -> u64 {
        self.next_physical += 1;
        self.physical.insert(self.next_physical, physical);
        self.next_physical
    }

    /// A physical allocation whose handle is valid: referenced at least once.
    fn handle(&mut self, handle: u64) -> CuResult<&mut Physical> {
        self.physical.get_mut(&handle).filter(|p| p.refs > 0).ok_or(INVALID_VALUE)
    }

    /// Lets `handle`'s memory go if nothing refers to it any more.
    fn settle(&mut self, handle: u64) {
        if self.physical.get(&handle).is_some_and(Physical::unused) {
            self.physical.remove(&handle);
        }
    }

    /// Lets go of every physical allocation nothing refers to (an exported descriptor
    /// closed since the last look).
    fn settle_physical(&mut self) {
        self.physical.retain(|_, p| !p.unused());
    }

    /// `cuMemRelease`: one handle reference less; the memory goes once nothing refers to it.
    pub fn release_physical(&mut self, handle: u64) -> CuResult {
        self.handle(handle)?.refs -= 1;
        self.settle(handle);
        Ok(())
    }

    /// `cuMemRetainAllocationHandle`: the handle mapped at `addr` (any address inside a
    /// mapping), with one more reference.
    pub fn retain_physical(&mut self, addr: u64) -> CuResult<u64> {
        let (&start, m) = self.mappings.range(..=addr).next_back().ok_or(INVALID_VALUE)?;
        if addr >= start + m.size {
            return Err(INVALID_VALUE);
        }
        let handle = m.handle;
        self.physical.get_mut(&handle).ok_or(INVALID_VALUE)?.refs += 1;
        Ok(handle)
    }

    /// `cuMemExportToShareableHandle` as a POSIX file descriptor (a new descriptor of the
    /// allocation's memfd), for an allocation created to be exported so.
    pub fn export_physical(&mut self, handle: u64, handle_type: CUmemAllocationHandleType) -> CuResult<c_int> {
        let p = self.handle(handle)?;
        match handle_type {
            CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR if p.exportable => {}
            CU_MEM_HANDLE_TYPE_FABRIC => return Err(NOT_SUPPORTED),
            _ => return Err(INVALID_VALUE),
        }
        // SAFETY: duplicating a live descriptor this value owns; the result is checked.
        let fd = unsafe { libc::fcntl(p.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            eprintln!("fakegpu: cuMemExportToShareableHandle: {}", io::Error::last_os_error());
            return Err(OUT_OF_MEMORY);
        }
        p.exported.extend(Exported::of(fd));
        Ok(fd)
    }

    /// `cuMemImportFromShareableHandle` of a POSIX file descriptor that
    /// `cuMemExportToShareableHandle` handed out (here or in another process): a new handle to
    /// the same memory. The device memory stays the exporter's.
    pub fn import_physical(&mut self, fd: c_int, handle_type: CUmemAllocationHandleType) -> CuResult<u64> {
        match handle_type {
            CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR => {}
            CU_MEM_HANDLE_TYPE_FABRIC => return Err(NOT_SUPPORTED),
            _ => return Err(INVALID_VALUE),
        }
        let size = exported_memfd_size(fd).ok_or(INVALID_VALUE)?;
        // SAFETY: duplicating the caller's descriptor, checked above to be one of ours; the
        // caller keeps its own.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(INVALID_VALUE);
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        Ok(self.add_physical(Physical {
            size,
            device: 0,
            handle_types: CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            fd,
            _charge: None,
            refs: 1,
            mappings: 0,
            exportable: true,
            exported: Vec::new(),
        }))
    }

    /// `cuMemGetAllocationPropertiesFromHandle`: what the allocation was created with.
    pub fn physical_prop(&self, handle: u64) -> CuResult<CUmemAllocationProp> {
        let p = self.physical.get(&handle).filter(|p| p.refs > 0).ok_or(INVALID_VALUE)?;
        let mut prop = CUmemAllocationProp {
            type_: CU_MEM_ALLOCATION_TYPE_PINNED,
            requestedHandleTypes: p.handle_types,
            ..Default::default()
        };
        prop.location.type_ = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.__bindgen_anon_1.id = p.device as c_int;
        Ok(prop)
    }

    /// `cuMemAddressReserve`: `size` and `align` whole granules (`align` 0 for the
    /// granularity); the address hint is ignored, as the driver may.
    pub fn reserve(&mut self, size: u64, align: u64) -> CuResult<u64> {
        let align = if align == 0 { GRANULARITY } else { align };
        if size == 0 || !size.is_multiple_of(GRANULARITY) || !align.is_power_of_two() || align < GRANULARITY {
            return Err(INVALID_VALUE);
        }
        let range = HostMemory::reserve(size, align)?;
        let addr = range.addr();
        self.reservations.insert(addr, range);
        Ok(addr)
    }

    /// `cuMemAddressFree`: exactly a reserved range; anything still mapped there is unmapped.
    pub fn free_reservation(&mut self, ptr: u64, size: u64) -> CuResult {
        match self.reservations.get(&ptr) {
            Some(r) if r.len as u64 == size => {}
            _ => return Err(INVALID_VALUE),
        }
        let inside: Vec<u64> = self.mappings.range(ptr..ptr + size).map(|(&a, _)| a).collect();
        for addr in inside {
            self.drop_mapping(addr);
        }
        self.reservations.remove(&ptr);
        Ok(())
    }

    fn reservation_containing(&self, ptr: u64, size: u64) -> Option<&HostMemory> {
        let (&start, r) = self.reservations.range(..=ptr).next_back()?;
        (ptr.checked_add(size)? <= start + r.len as u64).then_some(r)
    }

    /// `cuMemMap`: map `size` bytes of a physical allocation, from `offset`, at `ptr` inside
    /// a reservation, over nothing already mapped.
    pub fn map(&mut self, ptr: u64, size: u64, offset: u64, handle: u64) -> CuResult {
        let aligned = [ptr, size, offset].iter().all(|v| v.is_multiple_of(GRANULARITY));
        if !aligned || size == 0 || self.reservation_containing(ptr, size).is_none() {
            return Err(INVALID_VALUE);
        }
        let p = self.physical.get(&handle).filter(|p| p.refs > 0).ok_or(INVALID_HANDLE)?;
        if offset.checked_add(size).is_none_or(|end| end > p.size) {
            return Err(INVALID_VALUE);
        }
        let overlaps = self.mappings.range(..ptr + size).next_back().is_some_and(|(&a, m)| a + m.size > ptr);
        if overlaps {
            return Err(INVALID_VALUE);
        }
        // SAFETY: [ptr, ptr+size) lies inside a reservation this process owns and holds no
        // mapping (checked above), so MAP_FIXED replaces only our own PROT_NONE pages; the fd
        // is a live memfd of at least offset+size bytes.
        let addr = unsafe {
            libc::mmap(
                ptr as *mut libc::c_void,
                size as usize,
                libc::PROT_NONE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                p.fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(OUT_OF_MEMORY);
        }
        self.physical.get_mut(&handle).ok_or(INVALID_HANDLE)?.mappings += 1;
        self.mappings.insert(ptr, Mapping { size, handle, access: CU_MEM_ACCESS_FLAGS_PROT_NONE });
        Ok(())
    }

    /// The mappings that tile `[ptr, ptr+size)` exactly, in order.
    fn whole_mappings(&self, ptr: u64, size: u64) -> CuResult<Vec<u64>> {
        let end = ptr.checked_add(size).ok_or(INVALID_VALUE)?;
        let mut at = ptr;
        let mut found = Vec::new();
        for (&addr, m) in self.mappings.range(ptr..end) {
            if addr != at {
                return Err(INVALID_VALUE);
            }
            found.push(addr);
            at = addr + m.size;
        }
        if size == 0 || at != end {
            return Err(INVALID_VALUE);
        }
        Ok(found)
    }

    /// Put the reservation's inaccessible pages back where a mapping was.
    fn drop_mapping(&mut self, addr: u64) {
        let Some(m) = self.mappings.remove(&addr) else { return };
        // SAFETY: the range was our mapping inside our reservation; MAP_FIXED swaps it for
        // fresh PROT_NONE pages, keeping the reservation whole.
        unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                m.size as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            );
        }
        if let Some(p) = self.physical.get_mut(&m.handle) {
            p.mappings -= 1;
        }
        self.settle(m.handle);
    }

    /// `cuMemUnmap`: a range made of whole mappings.
    pub fn unmap(&mut self, ptr: u64, size: u64) -> CuResult {
        for addr in self.whole_mappings(ptr, size)? {
            self.drop_mapping(addr);
        }
        Ok(())
    }

    /// `cuMemSetAccess`: a range made of whole mappings.
    pub fn set_access(&mut self, ptr: u64, size: u64, access: CUmemAccess_flags) -> CuResult {
        let prot = match access {
            CU_MEM_ACCESS_FLAGS_PROT_NONE => libc::PROT_NONE,
            CU_MEM_ACCESS_FLAGS_PROT_READ => libc::PROT_READ,
            CU_MEM_ACCESS_FLAGS_PROT_READWRITE => libc::PROT_READ | libc::PROT_WRITE,
            _ => return Err(INVALID_VALUE),
        };
        for addr in self.whole_mappings(ptr, size)? {
            let m = self.mappings.get_mut(&addr).ok_or(INVALID_VALUE)?;
            // SAFETY: the range is one of our memfd mappings.
            if unsafe { libc::mprotect(addr as *mut libc::c_void, m.size as usize, prot) } != 0 {
                return Err(INVALID_VALUE);
            }
            m.access = access;
        }
        Ok(())
    }

    /// `cuMemHostAlloc`, `cuMemAllocHost`: zeroed, page-locked (in name) host memory.
    pub fn host_alloc(&mut self, len: u64, flags: u32) -> CuResult<u64> {
        if len == 0 || flags & !HOST_ALLOC_FLAGS != 0 {
            return Err(INVALID_VALUE);
        }
        let memory = HostMemory::new(len)?;
        let addr = memory.addr();
        self.host.insert(addr, Host { len, flags, _memory: Some(memory) });
        Ok(addr)
    }

    /// `cuMemFreeHost`: the start of a `cuMemHostAlloc` allocation.
    pub fn host_free(&mut self, ptr: u64) -> CuResult {
        match self.host.get(&ptr) {
            Some(h) if h._memory.is_some() => {
                self.host.remove(&ptr);
                Ok(())
            }
            _ => Err(INVALID_VALUE),
        }
    }

    /// `cuMemHostRegister`: `[ptr, ptr+len)` of the caller's memory, overlapping nothing
    /// registered or allocated here.
    pub fn host_register(&mut self, ptr: u64, len: u64, flags: u32) -> CuResult {
        let end = ptr.checked_add(len).filter(|_| ptr != 0 && len != 0).ok_or(INVALID_VALUE)?;
        if flags & !HOST_REGISTER_FLAGS != 0 {
            return Err(INVALID_VALUE);
        }
        if self.host.range(..end).next_back().is_some_and(|(&a, h)| a + h.len > ptr) {
            return Err(HOST_MEMORY_ALREADY_REGISTERED);
        }
        self.host.insert(ptr, Host { len, flags, _memory: None });
        Ok(())
    }

    /// `cuMemHostUnregister`: the start of a registered range.
    pub fn host_unregister(&mut self, ptr: u64) -> CuResult {
        match self.host.get(&ptr) {
            Some(h) if h._memory.is_none() => {
                self.host.remove(&ptr);
                Ok(())
            }
            _ => Err(HOST_MEMORY_NOT_REGISTERED),
        }
    }

    /// The flags of the page-locked range holding `ptr`.
    pub fn host_flags(&self, ptr: u64) -> CuResult<u32> {
        match self.host.range(..=ptr).next_back() {
            Some((&a, h)) if ptr < a + h.len => Ok(h.flags),
            _ => Err(INVALID_VALUE),
        }
    }

    /// `cuMemGetAddressRange`: the allocation or mapping holding `ptr`, as (start, size).
    pub fn address_range(&self, ptr: u64) -> CuResult<(u64, u64)> {
        if let Some((&start, a)) = self.allocations.range(..=ptr).next_back()
            && ptr < start + a.size
        {
            return Ok((start, a.size));
        }
        match self.mappings.range(..=ptr).next_back() {
            Some((&start, m)) if ptr < start + m.size => Ok((start, m.size)),
            _ => Err(NOT_FOUND),
        }
    }

    /// The host address of `len` device bytes at `ptr`, which must lie inside one allocation
    /// or inside mappings with enough access; `CUDA_ERROR_INVALID_VALUE` otherwise.
    pub fn span(&self, ptr: u64, len: u64, write: bool) -> CuResult<*mut u8> {
        let end = ptr.checked_add(len).ok_or(INVALID_VALUE)?;
        if let Some((&start, a)) = self.allocations.range(..=ptr).next_back()
            && end <= start + a.size
        {
            return Ok(ptr as *mut u8);
        }
        let need = if write { CU_MEM_ACCESS_FLAGS_PROT_READWRITE } else { CU_MEM_ACCESS_FLAGS_PROT_READ };
        let mut at = ptr;
        let first = self.mappings.range(..=ptr).next_back().map(|(&a, _)| a).ok_or(INVALID_VALUE)?;
        for (&addr, m) in self.mappings.range(first..) {
            if addr > at || addr + m.size <= at || m.access & need != need {
                return Err(INVALID_VALUE);
            }
            at = addr + m.size;
            if at >= end {
                return Ok(ptr as *mut u8);
            }
        }
        Err(INVALID_VALUE)
    }

    /// `cuArrayCreate`, `cuArray3DCreate`, `cuMipmappedArrayCreate`.
    pub fn create_array(
        &mut self,
        device: &'static DeviceState,
        ctx: Handle,
        desc: &CUDA_ARRAY3D_DESCRIPTOR,
        levels: Option<u32>,
    ) -> CuResult<Handle> {
        let bytes = array_bytes(desc, levels)?;
        self.count_call()?;
        let charge = Charge::uncounted(device, granules(bytes).ok_or(OUT_OF_MEMORY)?)?;
        let array = new_handle();
        self.arrays.insert(array, Array { ctx, mipmapped: levels.is_some(), _charge: charge });
        Ok(array)
    }

    pub fn destroy_array(&mut self, array: Handle, mipmapped: bool) -> CuResult {
        match self.arrays.get(&array) {
            Some(a) if a.mipmapped == mipmapped => {}
            _ => return Err(INVALID_HANDLE),
        }
        self.arrays.remove(&array);
        Ok(())
    }

    /// Free what `ctx` allocated, as destroying the context does.
    pub fn drop_context(&mut self, ctx: Handle) {
        self.allocations.retain(|_, a| a.owner != Owner::Context(ctx));
        self.arrays.retain(|_, a| a.ctx != ctx);
    }
}

impl Pool {
    fn new(device: u32, default: bool) -> Self {
        Self {
            device,
            default,
            free: Vec::new(),
            reserved: 0,
            reserved_high: 0,
            used: 0,
            used_high: 0,
            reuse: [1; 3],
            release_threshold: 0,
        }
    }
}

/// The name of `cuMemCreate`'s memfds, as `/proc/self/fd` shows it (`memfd:<name>`).
const MEMFD_NAME: &std::ffi::CStr = c"fakegpu-cuMemCreate";

/// A memfd of `size` bytes for `cuMemCreate`.
fn memfd(size: u64) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name and valid flags; the result is checked.
    let fd = unsafe { libc::memfd_create(MEMFD_NAME.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size = libc::off_t::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is a live memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The size of `fd` if it is one of `cuMemCreate`'s memfds (as an exported descriptor is).
fn exported_memfd_size(fd: c_int) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let name = format!("/memfd:{}", MEMFD_NAME.to_str().ok()?);
    if !link.to_str()?.starts_with(&name) {
        return None;
    }
    // SAFETY: `stat` is plain data; fstat fills it for the open descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_size as u64)
}

/// Bytes per element of a `CUarray_format` with `channels` channels.
fn element_bytes(format: CUarray_format, channels: u32) -> CuResult<u64> {
    let per_channel = match format {
        0x01 | 0x08 => 1,        // UNSIGNED_INT8, SIGNED_INT8
        0x02 | 0x09 | 0x10 => 2, // UNSIGNED_INT16, SIGNED_INT16, HALF
        0x03 | 0x0a | 0x20 => 4, // UNSIGNED_INT32, SIGNED_INT32, FLOAT
        _ => return Err(INVALID_VALUE),
    };
    if !matches!(channels, 1 | 2 | 4) {
        return Err(INVALID_VALUE);
    }
    Ok(per_channel * u64::from(channels))
}

/// An array's bytes: width × height × depth × element size (a zero height or depth counts
/// as one), summed over `levels` mipmap levels, each half the previous in every dimension.
pub fn array_bytes(desc: &CUDA_ARRAY3D_DESCRIPTOR, levels: Option<u32>) -> CuResult<u64> {
    let element = element_bytes(desc.Format, desc.NumChannels)?;
    let (w, h, d) = (desc.Width as u64, desc.Height as u64, desc.Depth as u64);
    if w == 0 || (h == 0 && d != 0) {
        return Err(INVALID_VALUE);
    }
    let levels = levels.unwrap_or(1);
    let most = 64 - w.max(h).max(d).leading_zeros();
    if levels == 0 || levels > most {
        return Err(INVALID_VALUE);
    }
    let mut total = 0u64;
    for level in 0..levels {
        let dim = |x: u64| (x >> level).max(1);
        let bytes = dim(w)
            .checked_mul(dim(h))
            .and_then(|b| b.checked_mul(dim(d)))
            .and_then(|b| b.checked_mul(element))
            .ok_or(OUT_OF_MEMORY)?;
        total = total.checked_add(bytes).ok_or(OUT_OF_MEMORY)?;
    }
    Ok(total)
}

/// `cuMemAllocPitch`: (pitch, bytes) for rows of `width` bytes.
pub fn pitch(width: u64, height: u64, element: u32) -> CuResult<(u64, u64)> {
    if width == 0 || height == 0 || !matches!(element, 4 | 8 | 16) {
        return Err(INVALID_VALUE);
    }
    let pitch = width.checked_next_multiple_of(PITCH_ALIGNMENT).ok_or(OUT_OF_MEMORY)?;
    Ok((pitch, pitch.checked_mul(height).ok_or(OUT_OF_MEMORY)?))
}

// ---- the calls, as the exports make them -------------------------------------------------

/// The current context and the shared state of its device.
fn current(reg: &Registry, driver: &Driver) -> CuResult<(Handle, &'static DeviceState)> {
    let ctx = context::current(reg)?;
    Ok((ctx, driver.device(context::get(reg, ctx)?.device)))
}

/// `cuMemAlloc`, `cuMemAllocManaged`: in the current context.
pub(crate) fn alloc(size: u64) -> CuResult<u64> {
    let d = driver()?;
    let mut reg = d.lock();
    let (ctx, state) = current(&reg, d)?;
    reg.memory.alloc(state, ctx, size)
}

/// `cuMemAllocPitch`: (address, pitch).
pub(crate) fn alloc_pitch(width: u64, height: u64, element: u32) -> CuResult<(u64, u64)> {
    let (pitch, bytes) = pitch(width, height, element)?;
    Ok((alloc(bytes)?, pitch))
}

/// `cuMemFree`: 0 is accepted and frees nothing, as the real driver does (`cudaFree(0)`, the
/// usual way to start the runtime, ends here).
pub(crate) fn free(ptr: u64) -> CuResult {
    let d = driver()?;
    if ptr == 0 {
        return Ok(());
    }
    let mut reg = d.lock();
    match reg.graph_memory.free(ptr) {
        Some(freed) => freed,
        None => reg.memory.free(ptr),
    }
}

/// `cuMemGetInfo`: (free, total) of the current context's device, all processes counted; an
/// MPS client's pinned limit bounds both (`mps::mem_info`).
pub(crate) fn info() -> CuResult<(u64, u64)> {
    let d = driver()?;
    let mut reg = d.lock();
    let (_, state) = current(&reg, d)?;
    reg.memory.settle_physical();
    let total = state.total();
    Ok(crate::mps::mem_info(total.saturating_sub(state.used()), total, state.held()))
}

pub(crate) fn default_pool(device: CUdevice) -> CuResult<Handle> {
    let d = driver()?;
    let (_, state) = super::device::gpu(d.sim, device)?;
    Ok(d.lock().memory.default_pool(state.index()))
}

/// `cuDeviceGetMemPool`.
pub(crate) fn current_pool(device: CUdevice) -> CuResult<Handle> {
    let d = driver()?;
    let (_, state) = super::device::gpu(d.sim, device)?;
    Ok(d.lock().memory.current_pool(state.index()))
}

/// `cuDeviceSetMemPool`.
pub(crate) fn set_current_pool(device: CUdevice, pool: Handle) -> CuResult {
    let d = driver()?;
    let (_, state) = super::device::gpu(d.sim, device)?;
    d.lock().memory.set_current_pool(state.index(), pool)
}

/// A `CUmemAllocationProp` this driver can satisfy: pinned memory on one of its devices.
pub(crate) fn check_prop(sim: &Simulator, prop: &CUmemAllocationProp) -> CuResult<u32> {
    if prop.type_ != CU_MEM_ALLOCATION_TYPE_PINNED || prop.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
        return Err(INVALID_VALUE);
    }
    let (_, state) = super::device::gpu(sim, location_id(&prop.location)).map_err(|_| INVALID_VALUE)?;
    Ok(state.index())
}

/// `cuMemCreate`.
pub(crate) fn create(size: u64, prop: &CUmemAllocationProp) -> CuResult<u64> {
    let d = driver()?;
    let device = check_prop(d.sim, prop)?;
    d.lock().memory.create_physical(d.device(device), size, prop.requestedHandleTypes)
}

/// `cuMemSetAccess`: one descriptor per device; this driver's devices all see the same
/// memory, so the last descriptor's flags apply.
pub(crate) fn set_access(ptr: u64, size: u64, desc: &[CUmemAccessDesc]) -> CuResult {
    let d = driver()?;
    if desc.is_empty() {
        return Err(INVALID_VALUE);
    }
    for access in desc {
        if access.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
            return Err(INVALID_VALUE);
        }
        super::device::gpu(d.sim, location_id(&access.location)).map_err(|_| INVALID_VALUE)?;
    }
    let flags = desc[desc.len() - 1].flags;
    d.lock().memory.set_access(ptr, size, flags)
}

/// `cuMemAllocAsync` (pool `None`: the stream's device's current pool) and
/// `cuMemAllocFromPoolAsync`.
pub(crate) fn alloc_async(size: u64, pool: Option<Handle>, stream: CUstream, per_thread: bool) -> CuResult<u64> {
    let d = driver()?;
    let mut reg = d.lock();
    let q = super::stream::queue(&reg, stream, per_thread)?;
    let ctx = super::stream::queue_context(&reg, q);
    let pool = match pool {
        Some(pool) => pool,
        None => reg.memory.current_pool(context::get(&reg, ctx)?.device),
    };
    let device = reg.memory.pool_device(pool)?;
    if super::graph::is_capturing(&reg, q) {
        let addr = reg.graph_memory.new_address(device, size)?;
        super::graph::capture(&mut reg, q, super::graph::Node::MemAlloc { addr, size })?;
        return Ok(addr);
    }
    reg.memory.alloc_from_pool(d.device(device), pool, size)
}

/// `cuMemFreeAsync`.
pub(crate) fn free_async(ptr: u64, stream: CUstream, per_thread: bool) -> CuResult {
    let mut reg = driver()?.lock();
    let q = super::stream::queue(&reg, stream, per_thread)?;
    if super::graph::capture(&mut reg, q, super::graph::Node::MemFree(ptr))? {
        return Ok(());
    }
    match reg.graph_memory.free(ptr) {
        Some(freed) => freed,
        None => reg.memory.free(ptr),
    }
}

/// `cuMemPoolCreate`: pinned memory on a device.
pub(crate) fn pool_create(props: &CUmemPoolProps) -> CuResult<Handle> {
    let d = driver()?;
    if props.allocType != CU_MEM_ALLOCATION_TYPE_PINNED || props.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
        return Err(INVALID_VALUE);
    }
    let (_, state) = super::device::gpu(d.sim, location_id(&props.location)).map_err(|_| INVALID_VALUE)?;
    Ok(d.lock().memory.create_pool(state.index()))
}

/// `cuArrayCreate`, `cuArray3DCreate`, `cuMipmappedArrayCreate`: in the current context.
pub(crate) fn array_create(desc: &CUDA_ARRAY3D_DESCRIPTOR, levels: Option<u32>) -> CuResult<Handle> {
    let d = driver()?;
    let mut reg = d.lock();
    let (ctx, state) = current(&reg, d)?;
    reg.memory.create_array(state, ctx, desc, levels)
}

/// Where a copy writes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dst {
    Host(*mut u8),
    Device(u64),
}

/// Where a copy reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Src {
    Host(*const u8),
    Device(u64),
}

/// The index of a `REUSE_*` pool attribute.
fn reuse_index(attribute: CUmemPool_attribute) -> CuResult<usize> {
    match attribute {
        CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES => Ok(0),
        CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC => Ok(1),
        CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => Ok(2),
        _ => Err(INVALID_VALUE),
    }
}

/// `cuMemcpy`, `cuMemcpyAsync`: device or host memory on either side, told apart by address
/// (unified addressing).
pub(crate) fn copy_unified(dst: u64, src: u64, n: usize, stream: Option<CUstream>, per_thread: bool) -> CuResult {
    let (dst_device, src_device) = {
        let reg = driver()?.lock();
        let device = |p: u64| reg.memory.address_range(p).is_ok() || reg.graph_memory.holds(p, 1);
        (device(dst), device(src))
    };
    let to = if dst_device { Dst::Device(dst) } else { Dst::Host(dst as *mut u8) };
    let from = if src_device { Src::Device(src) } else { Src::Host(src as *const u8) };
    copy(to, from, n, stream, per_thread)
}

/// `cuMemcpy*`: `stream` `None` for the synchronous calls, which first wait for the default
/// stream (legacy, or per-thread in `_ptds` calls) as the real ones do. Device ranges must
/// lie inside live allocations (or accessible mappings), or inside one graph allocation,
/// which has no contents: a copy into it is dropped, a copy out of it reads zeros.
pub(crate) fn copy(dst: Dst, src: Src, n: usize, stream: Option<CUstream>, per_thread: bool) -> CuResult {
    let d = driver()?;
    let sync = stream.is_none();
    let q = super::stream::queue(&d.lock(), stream.unwrap_or(std::ptr::null_mut()), per_thread)?;
    if sync {
        let until = launch::completion(&d.lock(), q);
        launch::wait_until(until);
    }
    if n == 0 {
        return Ok(());
    }
    let reg = d.lock();
    // `None`: inside a graph allocation.
    let to = match dst {
        Dst::Host(p) if p.is_null() => return Err(INVALID_VALUE),
        Dst::Host(p) => Some(p),
        Dst::Device(p) if reg.graph_memory.holds(p, n as u64) => None,
        Dst::Device(p) => Some(reg.span(p, n as u64, true)?),
    };
    let from = match src {
        Src::Host(p) if p.is_null() => return Err(INVALID_VALUE),
        Src::Host(p) => Some(p),
        Src::Device(p) if reg.graph_memory.holds(p, n as u64) => None,
        Src::Device(p) => Some(reg.span(p, n as u64, false)?.cast_const()),
    };
    match (from, to) {
        (_, None) => {}
        // SAFETY: as below, for the destination alone.
        (None, Some(to)) => unsafe { std::ptr::write_bytes(to, 0, n) },
        // SAFETY: device ranges were just checked to lie inside memory this process maps
        // with the access needed (and the registry lock keeps them mapped); host ranges are
        // valid for `n` bytes per the export's contract. `copy` allows overlap.
        (Some(from), Some(to)) => unsafe { std::ptr::copy(from, to, n) },
    }
    Ok(())
}

/// `cuMemsetD8`/`cuMemsetD32`: `n` copies of `pattern` (1 or 4 bytes, the start aligned
/// to it). Happens at once: these calls are asynchronous to the host anyway.
pub(crate) fn memset(ptr: u64, pattern: &[u8], n: usize, stream: CUstream, per_thread: bool) -> CuResult {
    let d = driver()?;
    let reg = d.lock();
    super::stream::queue(&reg, stream, per_thread)?;
    if !ptr.is_multiple_of(pattern.len() as u64) {
        return Err(INVALID_VALUE);
    }
    let len = n.checked_mul(pattern.len()).ok_or(INVALID_VALUE)?;
    if len == 0 {
        return Ok(());
    }
    if reg.graph_memory.holds(ptr, len as u64) {
        // Graph memory has no contents (see graph_memory): nothing to write.
        return Ok(());
    }
    let to = reg.span(ptr, len as u64, true)?;
    for i in 0..n {
        // SAFETY: [to, to+len) lies inside writable memory this process maps (checked just
        // above, under the registry lock), and i * pattern.len() + pattern.len() <= len.
        unsafe { std::ptr::copy_nonoverlapping(pattern.as_ptr(), to.wrapping_add(i * pattern.len()), pattern.len()) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(w: usize, h: usize, d: usize, format: CUarray_format, channels: u32) -> CUDA_ARRAY3D_DESCRIPTOR {
        CUDA_ARRAY3D_DESCRIPTOR { Width: w, Height: h, Depth: d, Format: format, NumChannels: channels, Flags: 0 }
    }

    #[test]
    fn array_sizes_follow_the_descriptor() {
        assert_eq!(array_bytes(&desc(100, 0, 0, 0x01, 1), None), Ok(100));
        assert_eq!(array_bytes(&desc(100, 10, 0, 0x20, 4), None), Ok(100 * 10 * 16));
        assert_eq!(array_bytes(&desc(64, 32, 8, 0x10, 2), None), Ok(64 * 32 * 8 * 4));
        // Mipmaps: 8×8, 4×4, 2×2, 1×1 of 4-byte texels.
        assert_eq!(array_bytes(&desc(8, 8, 0, 0x03, 1), Some(4)), Ok((64 + 16 + 4 + 1) * 4));
        assert_eq!(array_bytes(&desc(8, 8, 0, 0x03, 1), Some(5)), Err(INVALID_VALUE));
        assert_eq!(array_bytes(&desc(8, 8, 0, 0x03, 3), None), Err(INVALID_VALUE));
        assert_eq!(array_bytes(&desc(8, 8, 0, 0x77, 1), None), Err(INVALID_VALUE));
        assert_eq!(array_bytes(&desc(0, 8, 0, 0x01, 1), None), Err(INVALID_VALUE));
        assert_eq!(array_bytes(&desc(8, 0, 8, 0x01, 1), None), Err(INVALID_VALUE));
    }

    #[test]
    fn pitch_rounds_rows_to_512() {
        assert_eq!(pitch(100, 3, 4), Ok((512, 1536)));
        assert_eq!(pitch(512, 2, 8), Ok((512, 1024)));
        assert_eq!(pitch(513, 1, 16), Ok((1024, 1024)));
        assert_eq!(pitch(100, 3, 2), Err(INVALID_VALUE));
        assert_eq!(pitch(0, 3, 4), Err(INVALID_VALUE));
    }

    #[test]
    fn granules_round_up() {
        assert_eq!(granules(1), Some(GRANULARITY));
        assert_eq!(granules(GRANULARITY), Some(GRANULARITY));
        assert_eq!(granules(GRANULARITY + 1), Some(2 * GRANULARITY));
        assert_eq!(granules(u64::MAX), None);
    }
}
