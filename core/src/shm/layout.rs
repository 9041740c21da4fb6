//! [`shared_struct!`](crate::shared_struct): one definition of a struct that lives in a shared
//! file, from which come its atomic layout, a plain snapshot of it, the table of its fields'
//! offsets and sizes (for docs and tests), and compile-time checks that it has no padding.

/// One field of a shared struct: where it is and how big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    /// Bytes from the start of the struct.
    pub offset: usize,
    pub size: usize,
}

/// Defines a `#[repr(C)]` struct that lives in a shared file.
///
/// Two forms:
///
/// - `struct Header as HeaderValues { magic: [u8; 8], version: u32, … }`: a struct of plain
///   values (`u8`, `u16`, `u32`, `u64` and arrays of them), stored as their atomic twins.
///   `Header` holds the atomics; `HeaderValues` is a plain snapshot with the same fields, read
///   by `Header::load` (to be validated, never trusted) and written by `Header::store`.
/// - `struct File { header: Header, slots: [Slot; 1024], … }`: a struct of shared structs (and
///   arrays of them, or of atomics), stored as they are.
///
/// Either way the struct gets `FIELDS`, every field's name, offset and size (computed with
/// `offset_of!`, for docs and tests), is marked [`Shared`](crate::shm::Shared), and fails to
/// compile if `#[repr(C)]` would put padding anywhere in it.
#[macro_export]
macro_rules! shared_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident as $values:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: <$ty as $crate::shm::atomic::Plain>::Atomic, )*
        }

        #[doc = concat!("A snapshot of [`", stringify!($name), "`]: its fields as plain values.")]
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(dead_code)]
        $vis struct $values {
            $( $(#[$fmeta])* $fvis $field: $ty, )*
        }

        #[allow(dead_code)]
        impl $name {
            /// Every field: name, offset, size.
            pub const FIELDS: &'static [$crate::shm::Field] = &[$(
                $crate::shm::Field {
                    name: stringify!($field),
                    offset: ::core::mem::offset_of!($name, $field),
                    size: ::core::mem::size_of::<$ty>(),
                },
            )*];

            /// Reads every field (`Acquire`). Other processes may write between two fields:
            /// validate the snapshot before using it.
            pub fn load(&self) -> $values {
                $values {
                    $( $field: <$ty as $crate::shm::atomic::Plain>::load(&self.$field, $crate::shm::atomic::Ordering::Acquire), )*
                }
            }

            /// Writes every field (`Release`), in order.
            pub fn store(&self, values: &$values) {
                $( <$ty as $crate::shm::atomic::Plain>::store(&self.$field, values.$field, $crate::shm::atomic::Ordering::Release); )*
            }
        }

        // SAFETY: repr(C), no padding (asserted below), and every field is the `Atomic` of a
        // `Plain` type, which is `Shared`.
        unsafe impl $crate::shm::atomic::Shared for $name {}
        // SAFETY: repr(C), fields are integers or arrays of integers, and there is no padding
        // (asserted below).
        unsafe impl $crate::shm::atomic::Pod for $values {}

        const _: () = {
            assert!(::core::mem::size_of::<$name>() == 0 $( + ::core::mem::size_of::<$ty>() )*, "padding in a shared struct");
            assert!(::core::mem::size_of::<$values>() == ::core::mem::size_of::<$name>());
            assert!(::core::mem::align_of::<$values>() == ::core::mem::align_of::<$name>());
            $( assert!(::core::mem::offset_of!($name, $field) == ::core::mem::offset_of!($values, $field)); )*
        };
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $ty, )*
        }

        impl $name {
            /// Every field: name, offset, size.
            #[allow(dead_code)]
            pub const FIELDS: &'static [$crate::shm::Field] = &[$(
                $crate::shm::Field {
                    name: stringify!($field),
                    offset: ::core::mem::offset_of!($name, $field),
                    size: ::core::mem::size_of::<$ty>(),
                },
            )*];
        }

        // SAFETY: repr(C), no padding (asserted below), and every field is `Shared` (checked
        // below).
        unsafe impl $crate::shm::atomic::Shared for $name {}

        const _: () = {
            assert!(::core::mem::size_of::<$name>() == 0 $( + ::core::mem::size_of::<$ty>() )*, "padding in a shared struct");
            const fn shared<T: $crate::shm::atomic::Shared>() {}
            $( shared::<$ty>(); )*
        };
    };
}
