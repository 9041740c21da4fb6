//! Kernel launches and synchronisation: every launch path goes through [`crate::pacing`],
//! which paces it to the slice's compute share (or passes it straight through outside a
//! paced slice); a synchronisation ends the pacing's window on its stream (an event recorded just
//! before it completes with the work, which also tells whether the GPU or the host was behind),
//! and the start of a stream capture keeps the pacing's events out of the captured graph.

use std::ffi::c_void;

use crate::driver::cuda;
use crate::ffi::*;
use crate::memory::lazylib;
use crate::pacing;

/// Devices a multi-device launch can name (more is refused by the driver anyway).
const MAX_MULTI_DEVICE: u32 = 64;

/// A launch whose stream is one of its arguments: `cuLaunchKernel`, `cuLaunchCooperativeKernel`,
/// `cuGraphLaunch` and their per-thread-stream twins.
macro_rules! paced {
    ($($imp:ident => $real:ident, $pt:literal, $stream:ident, $(kernel $f:ident,)? ($($arg:ident: $ty:ty),*);)*) => {$(
        /// # Safety
        #[doc = concat!("`", stringify!($real), "`'s contract.")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $imp($($arg: $ty),*) -> CUresult {
            let Some(real) = cuda().$real else { return CUDA_ERROR_NOT_SUPPORTED };
            $( if let Err(rc) = lazylib::launching($f) { return rc; } )?
            // SAFETY: forwarded unchanged.
            pacing::launch($stream, $pt, || unsafe { real($($arg),*) })
        }
    )*};
}

paced! {
    launch_kernel => cuLaunchKernel, false, stream, kernel f,
        (f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32, stream: CUstream,
         params: *mut *mut c_void, extra: *mut *mut c_void);
    launch_kernel_ptsz => cuLaunchKernel_ptsz, true, stream, kernel f,
        (f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32, stream: CUstream,
         params: *mut *mut c_void, extra: *mut *mut c_void);
    launch_cooperative_kernel => cuLaunchCooperativeKernel, false, stream, kernel f,
        (f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32, stream: CUstream,
         params: *mut *mut c_void);
    launch_cooperative_kernel_ptsz => cuLaunchCooperativeKernel_ptsz, true, stream, kernel f,
        (f: CUfunction, gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, shared: u32, stream: CUstream,
         params: *mut *mut c_void);
    graph_launch => cuGraphLaunch, false, stream, (exec: CUgraphExec, stream: CUstream);
    graph_launch_ptsz => cuGraphLaunch_ptsz, true, stream, (exec: CUgraphExec, stream: CUstream);
}

macro_rules! launch_kernel_ex {
    ($($imp:ident => $real:ident, $pt:literal),* $(,)?) => {$(
        /// # Safety
        #[doc = concat!("`", stringify!($real), "`'s contract.")]
        pub unsafe fn $imp(
            config: *const CUlaunchConfig,
            f: CUfunction,
            params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CUresult {
            let Some(real) = cuda().$real else { return CUDA_ERROR_NOT_SUPPORTED };
            if let Err(rc) = lazylib::launching(f) {
                return rc;
            }
            if config.is_null() {
                // SAFETY: forwarded unchanged; the driver rejects it.
                return unsafe { real(config, f, params, extra) };
            }
            // SAFETY: a non-null config points at a CUlaunchConfig per the contract.
            let stream = unsafe { (*config).hStream };
            // SAFETY: forwarded unchanged.
            pacing::launch(stream, $pt, || unsafe { real(config, f, params, extra) })
        }
    )*};
}

launch_kernel_ex!(launch_kernel_ex => cuLaunchKernelEx, false, launch_kernel_ex_ptsz => cuLaunchKernelEx_ptsz, true);

/// # Safety
/// `cuLaunchCooperativeKernelMultiDevice`'s contract.
pub unsafe fn launch_cooperative_kernel_multi_device(list: *mut CUDA_LAUNCH_PARAMS, n: u32, flags: u32) -> CUresult {
    let Some(real) = cuda().cuLaunchCooperativeKernelMultiDevice else { return CUDA_ERROR_NOT_SUPPORTED };
    if list.is_null() || n == 0 || n > MAX_MULTI_DEVICE {
        // SAFETY: forwarded unchanged; the driver judges it.
        return unsafe { real(list, n, flags) };
    }
    // SAFETY: `list` holds `n` launch parameter blocks per the contract.
    let streams: Vec<CUstream> = (0..n as usize).map(|i| unsafe { (*list.add(i)).hStream }).collect();
    // SAFETY: forwarded unchanged.
    pacing::launch_many(&streams, || unsafe { real(list, n, flags) })
}

macro_rules! stream_synchronize {
    ($($imp:ident => $real:ident, $pt:literal),* $(,)?) => {$(
        /// # Safety
        #[doc = concat!("`", stringify!($real), "`'s contract.")]
        pub unsafe fn $imp(stream: CUstream) -> CUresult {
            let Some(real) = cuda().$real else { return CUDA_ERROR_NOT_SUPPORTED };
            pacing::before_sync(Some(stream), $pt);
            // SAFETY: forwarded unchanged.
            let r = unsafe { real(stream) };
            if r == CUDA_SUCCESS {
                pacing::synchronized();
                crate::memory::synchronized();
            }
            r
        }
    )*};
}

stream_synchronize!(
    stream_synchronize => cuStreamSynchronize, false,
    stream_synchronize_ptsz => cuStreamSynchronize_ptsz, true,
);

/// # Safety
/// `cuCtxSynchronize`'s contract.
pub unsafe fn ctx_synchronize() -> CUresult {
    let Some(real) = cuda().cuCtxSynchronize else { return CUDA_ERROR_NOT_SUPPORTED };
    pacing::before_sync(None, false);
    // SAFETY: forwarded unchanged.
    let r = unsafe { real() };
    if r == CUDA_SUCCESS {
        pacing::synchronized();
        crate::memory::synchronized();
    }
    r
}

/// Work is about to be captured on a stream: the thread's open window there is closed first,
/// so that the pacing's own events never become nodes of the application's graph.
macro_rules! begin_capture {
    ($($imp:ident => $real:ident, $pt:literal, ($($arg:ident: $ty:ty),*)),* $(,)?) => {$(
        /// # Safety
        #[doc = concat!("`", stringify!($real), "`'s contract.")]
        pub unsafe fn $imp(stream: CUstream $(, $arg: $ty)*) -> CUresult {
            let Some(real) = cuda().$real else { return CUDA_ERROR_NOT_SUPPORTED };
            pacing::before_capture(stream, $pt);
            // SAFETY: forwarded unchanged.
            unsafe { real(stream $(, $arg)*) }
        }
    )*};
}

begin_capture!(
    stream_begin_capture => cuStreamBeginCapture, false, (),
    stream_begin_capture_ptsz => cuStreamBeginCapture_ptsz, true, (),
    stream_begin_capture_v2 => cuStreamBeginCapture_v2, false, (mode: CUstreamCaptureMode),
    stream_begin_capture_v2_ptsz => cuStreamBeginCapture_v2_ptsz, true, (mode: CUstreamCaptureMode),
    stream_begin_capture_to_graph => cuStreamBeginCaptureToGraph, false,
        (graph: CUgraph, deps: *const CUgraphNode, edges: *const CUgraphEdgeData, n: usize, mode: CUstreamCaptureMode),
    stream_begin_capture_to_graph_ptsz => cuStreamBeginCaptureToGraph_ptsz, true,
        (graph: CUgraph, deps: *const CUgraphNode, edges: *const CUgraphEdgeData, n: usize, mode: CUstreamCaptureMode),
);
