//! Graph memory: what memory nodes (`cuGraphAddMemAllocNode`, `cuGraphAddMemFreeNode`, and a
//! `cuMemAllocAsync`/`cuMemFreeAsync` captured from a stream) take, as a real driver keeps it.
//!
//! - An alloc node gets its address when it is made (address space only, charged nothing).
//! - Each device has one graph memory pool per process. Uploading or launching an executable
//!   graph maps its alloc nodes' memory (the sum of their sizes, whole granules): the pool's
//!   reserve grows by what it does not hold unused already, charged to the device at once
//!   (`CUDA_ERROR_OUT_OF_MEMORY` when the device is full). The graph keeps that memory mapped
//!   between launches.
//! - A launch makes each of its allocations live (`USED_MEM_*`) until a free node, a
//!   `cuMemFreeAsync` or a `cuMemFree` frees it. Launching again while one is live fails with
//!   `CUDA_ERROR_INVALID_VALUE`, unless the graph was instantiated with
//!   `CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH`, which frees them first.
//! - `cuDeviceGraphMemTrim` unmaps the memory of graphs that are not running and have no live
//!   allocation, and gives back to the device every byte of the reserve no graph maps.
//!   Destroying an executable graph unmaps its memory (it stays reserved until a trim);
//!   destroying its context trims the pool.
//!
//! Graph memory has no contents (its addresses are not device allocations): a memset or a
//! copy into it (e.g. captured after a captured `cuMemAllocAsync`, as PyTorch's
//! `cudaMallocAsync` backend does) is accepted and writes nothing, a copy out of it reads
//! zeros. An alloc node's address range (address space only, no memory) is kept for the
//! process's life.

use std::collections::{BTreeMap, HashMap};

use super::error::{CuResult, INVALID_VALUE, OUT_OF_MEMORY};
use super::memory::{HostMemory, granules};
use super::types::*;
use super::{Handle, launch};
use crate::state::DeviceState;

/// One alloc node's address range.
#[derive(Debug)]
struct Address {
    device: u32,
    /// Whole granules.
    rounded: u64,
    _memory: HostMemory,
    /// Made live by a launch of `exec`, and not freed since.
    live: Option<Handle>,
}

/// A device's graph memory pool in this process.
#[derive(Debug, Default)]
struct Pool {
    /// The device's shared state, which the reserve is charged to (known once it is).
    state: Option<&'static DeviceState>,
    reserved: u64,
    reserved_high: u64,
    used: u64,
    used_high: u64,
    /// Executable graphs whose memory is mapped, with its size.
    mapped: HashMap<Handle, u64>,
}

impl Pool {
    fn unmapped(&self) -> u64 {
        self.reserved.saturating_sub(self.mapped.values().sum())
    }
}

#[derive(Debug, Default)]
pub(crate) struct GraphMemory {
    pools: HashMap<u32, Pool>,
    addresses: BTreeMap<u64, Address>,
}

impl GraphMemory {
    /// The address of a new alloc node of `size` bytes on `device`.
    pub fn new_address(&mut self, device: u32, size: u64) -> CuResult<u64> {
        if size == 0 {
            return Err(INVALID_VALUE);
        }
        let rounded = granules(size).ok_or(OUT_OF_MEMORY)?;
        let memory = HostMemory::new(rounded)?;
        let addr = memory.addr();
        self.addresses.insert(addr, Address { device, rounded, _memory: memory, live: None });
        Ok(addr)
    }

    /// Whether `addr` starts a graph allocation (what a free node may name).
    pub fn is_allocation(&self, addr: u64) -> bool {
        self.addresses.contains_key(&addr)
    }

    /// Whether `[ptr, ptr + len)` lies inside one graph allocation's address range.
    pub fn holds(&self, ptr: u64, len: u64) -> bool {
        let Some(end) = ptr.checked_add(len) else { return false };
        self.addresses.range(..=ptr).next_back().is_some_and(|(&start, a)| end <= start + a.rounded)
    }

    /// The device of the allocation at `addr`.
    pub fn device(&self, addr: u64) -> Option<u32> {
        self.addresses.get(&addr).map(|a| a.device)
    }

    /// The size (whole granules) of the allocation at `addr`.
    pub fn rounded(&self, addr: u64) -> Option<u64> {
        self.addresses.get(&addr).map(|a| a.rounded)
    }

    /// Maps `bytes` for `exec` on `device`, growing the reserve by what is not held unused.
    pub fn map(&mut self, state: &'static DeviceState, device: u32, exec: Handle, bytes: u64) -> CuResult {
        let pool = self.pools.entry(device).or_default();
        pool.state = Some(state);
        if bytes == 0 || pool.mapped.contains_key(&exec) {
            return Ok(());
        }
        let grow = bytes.saturating_sub(pool.unmapped());
        if grow > 0 {
            state.try_reserve(grow).map_err(|_| OUT_OF_MEMORY)?;
            pool.reserved += grow;
            pool.reserved_high = pool.reserved_high.max(pool.reserved);
        }
        pool.mapped.insert(exec, bytes);
        Ok(())
    }

    /// A launch of `exec` makes `allocs` live. Refused if one is live already, unless
    /// `auto_free`, which frees it first.
    pub fn make_live(&mut self, exec: Handle, allocs: &[u64], auto_free: bool) -> CuResult {
        if !auto_free && allocs.iter().any(|a| self.addresses.get(a).is_some_and(|a| a.live.is_some())) {
            return Err(INVALID_VALUE);
        }
        for addr in allocs {
            let _ = self.free(*addr);
            let Some(a) = self.addresses.get_mut(addr) else { continue };
            a.live = Some(exec);
            let pool = self.pools.entry(a.device).or_default();
            pool.used += a.rounded;
            pool.used_high = pool.used_high.max(pool.used);
        }
        Ok(())
    }

    /// Frees the live allocation at `addr`: `None` if `addr` is no graph allocation,
    /// `CUDA_ERROR_INVALID_VALUE` if it is not live.
    pub fn free(&mut self, addr: u64) -> Option<CuResult> {
        let a = self.addresses.get_mut(&addr)?;
        if a.live.take().is_none() {
            return Some(Err(INVALID_VALUE));
        }
        let pool = self.pools.entry(a.device).or_default();
        pool.used = pool.used.saturating_sub(a.rounded);
        Some(Ok(()))
    }

    /// `exec` is destroyed: its memory is unmapped once none of its allocations is live.
    pub fn drop_exec(&mut self, exec: Handle) {
        let live = self.addresses.values().any(|a| a.live == Some(exec));
        if !live {
            for pool in self.pools.values_mut() {
                pool.mapped.remove(&exec);
            }
        }
    }

    /// `cuDeviceGraphMemTrim`: unmaps what graphs that are idle (`running` says which are not)
    /// and hold nothing live have mapped, and gives the unmapped reserve back to the device.
    pub fn trim(&mut self, device: u32, running: impl Fn(Handle) -> bool) {
        let live: Vec<Handle> = self.addresses.values().filter_map(|a| a.live).collect();
        let Some(pool) = self.pools.get_mut(&device) else { return };
        pool.mapped.retain(|&exec, _| running(exec) || live.contains(&exec));
        let unmapped = pool.unmapped();
        if let Some(state) = pool.state {
            state.release(unmapped);
        }
        pool.reserved -= unmapped;
    }

    /// `cuDeviceGetGraphMemAttribute`.
    pub fn attribute(&self, device: u32, attr: CUgraphMem_attribute) -> CuResult<u64> {
        let pool = self.pools.get(&device);
        let get = |f: fn(&Pool) -> u64| pool.map_or(0, f);
        match attr {
            CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT => Ok(get(|p| p.used)),
            CU_GRAPH_MEM_ATTR_USED_MEM_HIGH => Ok(get(|p| p.used_high)),
            CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT => Ok(get(|p| p.reserved)),
            CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH => Ok(get(|p| p.reserved_high)),
            _ => Err(INVALID_VALUE),
        }
    }

    /// `cuDeviceSetGraphMemAttribute`: 0 resets a high watermark to the current value.
    pub fn reset_high(&mut self, device: u32, attr: CUgraphMem_attribute, value: u64) -> CuResult {
        let pool = self.pools.entry(device).or_default();
        match attr {
            CU_GRAPH_MEM_ATTR_USED_MEM_HIGH if value == 0 => pool.used_high = pool.used,
            CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH if value == 0 => pool.reserved_high = pool.reserved,
            _ => return Err(INVALID_VALUE),
        }
        Ok(())
    }
}

/// Whether `exec`'s last launch (done at `idle_at`) is still running.
pub(crate) fn running(idle_at: launch::Nanos) -> bool {
    idle_at > crate::timeline::now()
}
