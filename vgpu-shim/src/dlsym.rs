//! Our `dlsym`: programs that `dlopen` the driver and look its functions up by name (the CUDA
//! runtime, NVML users, Python bindings) are handed our wrappers for the functions we
//! intercept, and the driver's own for everything else.
//!
//! `dlsym(RTLD_NEXT, …)` must reach glibc with the *caller's* return address on the stack,
//! since glibc resolves "next" relative to the calling object: forwarding it from a Rust
//! function would make us the caller, and an interposer such as the JVM's libjsig would be
//! handed its own function and recurse forever. So `dlsym` is a naked function that
//! tail-jumps to glibc for `RTLD_NEXT` and calls [`dlsym_impl`] otherwise.

use std::ffi::{CStr, c_char, c_void};

use crate::driver::real_dlsym;
#[cfg(all(target_arch = "x86_64", not(test)))]
use crate::driver::{REAL_DLSYM, init_real_dlsym};

#[cfg(all(target_arch = "x86_64", not(test)))]
#[unsafe(naked)]
#[unsafe(no_mangle)]
/// # Safety
/// The C `dlsym` contract.
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "cmp rdi, -1", // RTLD_NEXT
        "jne {imp}",
        "mov rax, qword ptr [rip + {real}]",
        "test rax, rax",
        "jz 2f",
        "jmp rax",
        "2:",
        // Not resolved yet (another library's constructor ran before anything else): keep the
        // arguments and the 16-byte stack alignment across the call, then jump.
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {init}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "test rax, rax",
        "jz 3f",
        "jmp rax",
        "3:",
        "ret",
        imp = sym dlsym_impl,
        real = sym REAL_DLSYM,
        init = sym init_real_dlsym,
    )
}

/// Elsewhere a plain forwarder; `dlsym(RTLD_NEXT, …)` then resolves relative to this library.
#[cfg(all(not(target_arch = "x86_64"), not(test)))]
#[unsafe(no_mangle)]
/// # Safety
/// The C `dlsym` contract.
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    // SAFETY: forwarded unchanged.
    unsafe { dlsym_impl(handle, symbol) }
}

/// Every handle but `RTLD_NEXT`: the real lookup, then our wrapper if the name is one we
/// intercept and the driver's own function is what was found.
///
/// # Safety
/// The C `dlsym` contract.
pub unsafe extern "C" fn dlsym_impl(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    // SAFETY: forwarded unchanged to glibc.
    let real = unsafe { real_dlsym(handle, symbol) };
    if real.is_null() || symbol.is_null() {
        return real;
    }
    // SAFETY: dlsym found a symbol of this name, so it is a valid C string.
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    if !(name.starts_with(b"cu") || name.starts_with(b"nvml")) {
        return real;
    }
    crate::boundary::call(real, || crate::api::wrapper_for_driver_symbol(name, real as usize).unwrap_or(real), || real)
}
