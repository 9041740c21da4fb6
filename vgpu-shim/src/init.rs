//! `cuInit`: the first point where a process is known to use CUDA. It joins every slice's
//! region (so problems show now, with one clear line, not at some later allocation) and fails
//! closed if a slice cannot be enforced.

use crate::driver::cuda;
use crate::ffi::*;
use crate::state::{Refusal, state};

/// # Safety
/// `cuInit`'s contract.
pub unsafe fn cu_init(flags: u32) -> CUresult {
    // Fault injection for the test that proves a panic never leaves the shim (the unwinder is
    // linked statically, see build.rs): it must come back as CUDA_ERROR_UNKNOWN.
    if std::env::var_os("GPUSLICE_TEST_PANIC").is_some_and(|v| v == "cuInit") {
        panic!("GPUSLICE_TEST_PANIC=cuInit");
    }
    let Some(f) = cuda().cuInit else { return CUDA_ERROR_NOT_SUPPORTED };
    // SAFETY: forwarded unchanged.
    let rc = unsafe { f(flags) };
    if rc != CUDA_SUCCESS || !crate::state::active() {
        return rc;
    }
    let s = state();
    let joined: Result<(), Refusal> =
        s.check_broken().and_then(|()| s.slices.iter().try_for_each(|sl| sl.join().map(drop)));
    match joined {
        Ok(()) => rc,
        Err(r) => r.into(),
    }
}
