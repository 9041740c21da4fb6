//! The real driver's `cuGetProcAddress` hands out its own functions even when a preloaded
//! library exports the same names. Binding the library's references to its own functions
//! locally gives the simulator the same property: without it, taking an export's address
//! would go through the GOT and find the interposer's.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic-functions");
}
