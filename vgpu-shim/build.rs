//! Links the unwinder into `libgcc_s`'s place, statically.
//!
//! The shim is preloaded into every process of a container, `sh` and `ls` included, and most
//! of them never load `libgcc_s.so.1`; making them load it costs more than everything else the
//! shim does at start-up (measured by `benches/shim.rs`). The shim needs an unwinder only to
//! stop a panic at the C boundary, so it gets a private copy: a linker script named
//! `libgcc_s.so` that stands for the static `libgcc_eh.a` is found before the system's, which
//! is what `gcc -static-libgcc` does for shared libraries. The cdylib's version script keeps
//! the unwinder's symbols local, so the process's own `libgcc_s`, if it has one, is untouched.
fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("libgcc_s.so"), "INPUT(-lgcc_eh)\n").expect("writing the linker script");
    println!("cargo:rustc-link-search=native={}", out.display());
    // Our references to our own functions (the wrapper table hands their addresses out) bind
    // inside the library at link time instead of by symbol lookup at every process start.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic-functions");
    // Relative relocations packed (DT_RELR, glibc ≥ 2.36 reads it; older ones ignore it and
    // the linker then keeps ordinary ones): less for the loader to read and apply.
    println!("cargo:rerun-if-changed=build.rs");
}
