//! Turning a caller's raw pointers into checked Rust values at the export boundary.

use std::ffi::{CStr, c_char, c_int};
use std::ptr::NonNull;

use super::error::{CuResult, INVALID_VALUE};

/// An output pointer, checked non-null before the call does anything.
#[derive(Debug)]
pub(crate) struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    /// `CUDA_ERROR_INVALID_VALUE` for null.
    ///
    /// # Safety
    ///
    /// `p` is null or valid for a write of `T` until the export returns.
    pub unsafe fn new(p: *mut T) -> CuResult<Self> {
        NonNull::new(p).map(Self).ok_or(INVALID_VALUE)
    }

    /// An optional output: `None` for null.
    ///
    /// # Safety
    ///
    /// As for [`new`](Self::new).
    pub unsafe fn optional(p: *mut T) -> Option<Self> {
        NonNull::new(p).map(Self)
    }

    /// Where the value goes (for traces).
    pub fn as_ptr(&self) -> *mut T {
        self.0.as_ptr()
    }

    pub fn set(self, value: T) {
        // SAFETY: non-null, and the constructor's caller promised it is writable.
        unsafe { self.0.as_ptr().write(value) }
    }
}

/// Borrow an input struct; `CUDA_ERROR_INVALID_VALUE` for null.
///
/// # Safety
///
/// `p` is null or valid for reads of `T` until the export returns.
pub(crate) unsafe fn input<'a, T>(p: *const T) -> CuResult<&'a T> {
    // SAFETY: null or valid per the caller; `as_ref` maps null to None.
    unsafe { p.as_ref() }.ok_or(INVALID_VALUE)
}

/// Borrow `len` input structs; `CUDA_ERROR_INVALID_VALUE` for null with `len > 0`.
///
/// # Safety
///
/// `p` is null or valid for reads of `len` values of `T` until the export returns.
pub(crate) unsafe fn inputs<'a, T>(p: *const T, len: usize) -> CuResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(INVALID_VALUE);
    }
    // SAFETY: non-null and valid for `len` reads per the caller.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Borrow a NUL-terminated string; `CUDA_ERROR_INVALID_VALUE` for null.
///
/// # Safety
///
/// `s` is null or a NUL-terminated string that outlives the call.
pub(crate) unsafe fn c_str<'a>(s: *const c_char) -> CuResult<&'a CStr> {
    if s.is_null() {
        return Err(INVALID_VALUE);
    }
    // SAFETY: non-null and NUL-terminated per the caller.
    Ok(unsafe { CStr::from_ptr(s) })
}

/// Copy `s` into a buffer of `len` bytes, truncating to `len − 1` bytes and a NUL, as
/// `cuDeviceGetName` does.
///
/// # Safety
///
/// `buf` is null or valid for writes of `len` bytes.
pub(crate) unsafe fn put_str(buf: *mut c_char, len: c_int, s: &str) -> CuResult {
    let len = usize::try_from(len).map_err(|_| INVALID_VALUE)?;
    if buf.is_null() || len == 0 {
        return Err(INVALID_VALUE);
    }
    let n = s.len().min(len - 1);
    let buf = buf.cast::<u8>();
    // SAFETY: `buf` holds `len` > n bytes per the caller and cannot overlap `s`, which this
    // library owns.
    unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), buf, n) };
    // SAFETY: n < len, so the terminator is inside the buffer.
    unsafe { buf.wrapping_add(n).write(0) };
    Ok(())
}
