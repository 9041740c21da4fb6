//! The atomics of shared memory: every type that lives in a shared file, and every access to
//! one, comes from here.
//!
//! Files that other processes (and other containers) write are only ever read and written
//! through these atomics, never through plain references: a plain `&u32` into bytes another
//! process may change is undefined behaviour, an atomic is not. Keeping them behind this one
//! module means a model checker (`loom`'s atomics, say) can be swapped in here to check the
//! protocols built on them (the region's charges, the board's claims) without touching their
//! code.

pub use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

/// A type that may be mapped from a file other processes write: `#[repr(C)]`, valid for any
/// bit pattern, and interior mutable all through (atomics only), so a shared reference to it
/// stays sound while other processes store to it.
///
/// # Safety
///
/// Implement only for atomics, arrays of `Shared` types, and `#[repr(C)]` structs without
/// padding whose fields are all `Shared` (the [`shared_struct!`](crate::shared_struct) macro
/// checks all three).
pub unsafe trait Shared: Sync {}

// SAFETY: an atomic is valid for any bit pattern and is an `UnsafeCell` inside.
unsafe impl Shared for AtomicU8 {}
// SAFETY: as above.
unsafe impl Shared for AtomicU16 {}
// SAFETY: as above.
unsafe impl Shared for AtomicU32 {}
// SAFETY: as above.
unsafe impl Shared for AtomicU64 {}
// SAFETY: an array of `Shared` elements has no padding between them and is `Shared` throughout.
unsafe impl<T: Shared, const N: usize> Shared for [T; N] {}

/// A plain value stored in shared memory as its atomic twin (same size and alignment):
/// `u32` as `AtomicU32`, `[u8; 40]` as `[AtomicU8; 40]`.
pub trait Plain: Copy {
    /// How the value is stored.
    type Atomic: Shared;
    fn load(cell: &Self::Atomic, order: Ordering) -> Self;
    fn store(cell: &Self::Atomic, value: Self, order: Ordering);
}

macro_rules! plain {
    ($($t:ty => $a:ty),*) => {$(
        impl Plain for $t {
            type Atomic = $a;
            fn load(cell: &$a, order: Ordering) -> $t {
                cell.load(order)
            }
            fn store(cell: &$a, value: $t, order: Ordering) {
                cell.store(value, order)
            }
        }
        const _: () = assert!(size_of::<$t>() == size_of::<$a>() && align_of::<$t>() == align_of::<$a>());
    )*};
}
plain!(u8 => AtomicU8, u16 => AtomicU16, u32 => AtomicU32, u64 => AtomicU64);

impl<T: Plain, const N: usize> Plain for [T; N] {
    type Atomic = [T::Atomic; N];
    fn load(cell: &Self::Atomic, order: Ordering) -> Self {
        std::array::from_fn(|i| T::load(&cell[i], order))
    }
    fn store(cell: &Self::Atomic, value: Self, order: Ordering) {
        for (c, v) in cell.iter().zip(value) {
            T::store(c, v, order);
        }
    }
}

/// A `#[repr(C)]` struct of integers (and arrays of them) without padding, so its bytes are
/// all initialised: what a checksum may hash.
///
/// # Safety
///
/// Implement only for such structs ([`shared_struct!`](crate::shared_struct) checks it for the
/// snapshots it generates).
pub unsafe trait Pod: Copy {}

/// The bytes of `value`, in memory order.
pub fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no padding, so all `size_of::<T>()` bytes behind the reference are
    // initialised, and `u8` has no alignment requirement.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>()) }
}

/// Loads and stores of a whole array of atomics, element by element (a reader may see a mix of
/// two writes: validate what it means).
pub trait AtomicArray {
    type Value;
    fn load_all(&self, order: Ordering) -> Self::Value;
    fn store_all(&self, value: Self::Value, order: Ordering);
}

macro_rules! atomic_array {
    ($($t:ty => $a:ty),*) => {$(
        impl<const N: usize> AtomicArray for [$a; N] {
            type Value = [$t; N];
            fn load_all(&self, order: Ordering) -> [$t; N] {
                <[$t; N] as Plain>::load(self, order)
            }
            fn store_all(&self, value: [$t; N], order: Ordering) {
                <[$t; N] as Plain>::store(self, value, order)
            }
        }
    )*};
}
atomic_array!(u8 => AtomicU8, u16 => AtomicU16, u32 => AtomicU32, u64 => AtomicU64);
