//! Kernel launches. Without a compute limit they go straight to the driver: these wrappers
//! are where SM pacing hooks in, and their cost when idle is measured by `benches/shim.rs`.

use std::ffi::c_void;

use crate::driver::cuda;
use crate::ffi::*;

/// `cuLaunchKernel` and its per-thread-stream twin share one signature and one body.
macro_rules! launch {
    ($($imp:ident => $real:ident),* $(,)?) => {$(
        /// # Safety
        #[doc = concat!("`", stringify!($real), "`'s contract.")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $imp(
            f: CUfunction,
            gx: u32,
            gy: u32,
            gz: u32,
            bx: u32,
            by: u32,
            bz: u32,
            shared: u32,
            stream: CUstream,
            params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CUresult {
            let Some(real) = cuda().$real else { return CUDA_ERROR_NOT_SUPPORTED };
            // SAFETY: forwarded unchanged.
            unsafe { real(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra) }
        }
    )*};
}

launch!(launch_kernel => cuLaunchKernel, launch_kernel_ptsz => cuLaunchKernel_ptsz);
