//! One line to the host's log (`/dev/log`, which journald and rsyslog read) when the hook
//! refuses a container, so that the operator's `journalctl -t gpuslice-hook` shows a container
//! that was not started and why, besides the engine's error to whoever ran it.
//!
//! A datagram in the traditional syslog format (`<PRI>TAG[PID]: MESSAGE`, facility `daemon`).
//! Best effort: no log socket (a chroot, a minimal host) is not an error of the hook's.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// The host's log socket.
pub const DEV_LOG: &str = "/dev/log";
/// `daemon` facility (3) × 8 + `err` severity (3).
const DAEMON_ERR: u8 = 3 * 8 + 3;

/// Sends `message` (one line; newlines become spaces) tagged `gpuslice-hook` to `socket`.
pub fn error(socket: &Path, message: &str) -> io::Result<()> {
    let line = message.replace(['\n', '\r'], " ");
    let datagram = format!("<{DAEMON_ERR}>gpuslice-hook[{}]: {line}", std::process::id());
    let s = UnixDatagram::unbound()?;
    s.send_to(datagram.as_bytes(), socket).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_tagged_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        error(&path, "container abc on slice0: limits unreadable\nsecond line").unwrap();
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        let want = format!(
            "<27>gpuslice-hook[{}]: container abc on slice0: limits unreadable second line",
            std::process::id()
        );
        assert_eq!(got, want);
    }

    #[test]
    fn no_socket_is_an_error_not_a_panic() {
        assert!(error(Path::new("/nonexistent/log"), "x").is_err());
    }
}
