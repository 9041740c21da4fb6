//! `FAKEGPU_TRACE`: one line on stderr per `cuGetProcAddress` request, per `cuGetExportTable`
//! request, per call into a private (export-table) entry and per call of an export. It is how one finds what a
//! client (NVIDIA's runtime, a framework) needs from a driver: run it with the variable set
//! and read what it asked for and what it was told.
//!
//! ```text
//! FAKEGPU_TRACE=1 ./program 2>&1 | grep fakegpu:
//! fakegpu: cuGetProcAddress("cuMemAlloc", 12090, flags 0) = cuMemAlloc_v2
//! fakegpu: cuGetProcAddress("cuNoSuch", 12090, flags 0) = not found (SYMBOL_NOT_FOUND)
//! fakegpu: cuGetExportTable(6bd5fb6c-5bf4-e74a-8987-d93912fd9df9) = runtime interface
//! fakegpu: runtime interface[2](0x7ffd…, device 0) = 0
//! fakegpu: cuDevicePrimaryCtxRetain = 0
//! ```

use std::io::Write;
use std::sync::OnceLock;

/// Environment variable: anything but empty or `0` turns the trace on. Read once.
pub const TRACE_ENV: &str = "FAKEGPU_TRACE";

/// Whether the trace is on.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(TRACE_ENV).is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Write one trace line (`fakegpu: ` and `line`) if the trace is on. One `write` per line, so
/// lines of concurrent threads do not interleave.
pub fn line(line: impl FnOnce() -> String) {
    if enabled() {
        let text = format!("fakegpu: {}\n", line());
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// Trace a call of the export `name` that returned `code`.
pub fn call(name: &str, code: u32) {
    if enabled() {
        line(|| format!("{name} = {code}"));
    }
}
