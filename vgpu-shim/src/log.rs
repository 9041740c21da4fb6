//! Quiet by default: a guest in someone else's process writes nothing unless `GPUSLICE_LOG`
//! is set (`error`, `warn`, `info`, `debug`). Refusals that change what a program sees (a
//! slice that fails closed) are printed once whatever the level.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| match std::env::var("GPUSLICE_LOG").as_deref() {
        Ok("error") => Level::Error,
        Ok("warn") => Level::Warn,
        Ok("info") | Ok("1") => Level::Info,
        Ok("debug") | Ok("trace") => Level::Debug,
        _ => Level::Off,
    })
}

pub fn enabled(l: Level) -> bool {
    level() >= l
}

/// Writes one line to stderr with one `write(2)`, so lines from threads do not interleave.
pub fn line(text: &str) {
    let mut buf = String::with_capacity(text.len() + 12);
    buf.push_str("gpuslice: ");
    buf.push_str(text);
    buf.push('\n');
    // SAFETY: writing a valid buffer of its own length to fd 2; a failure is ignored.
    unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
}

/// Prints `text` once per process, whatever the level.
pub fn once(flag: &AtomicBool, text: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        line(text);
    }
}

macro_rules! log {
    ($lvl:ident, $($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::$lvl) {
            $crate::log::line(&format!($($arg)*));
        }
    };
}
pub(crate) use log;
