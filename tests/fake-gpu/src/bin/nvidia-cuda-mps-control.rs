//! A stand-in for NVIDIA's `nvidia-cuda-mps-control`, for the simulated GPU.
//!
//! Like the real one: `-d` runs the control daemon in the background, `-f` in the foreground;
//! without either it is the client that sends each line of standard input to the daemon
//! behind `CUDA_MPS_PIPE_DIRECTORY` (default `/tmp/nvidia-mps`) and prints the answers. The
//! daemon writes `nvidia-cuda-mps-control.pid` and its control socket `control` in the pipe
//! directory and logs to `control.log` in `CUDA_MPS_LOG_DIRECTORY` (default
//! `/var/log/nvidia-mps`).
//!
//! Commands: `get_server_list`, `set_default_active_thread_percentage <p>`,
//! `get_default_active_thread_percentage`, `set_default_device_pinned_mem_limit <dev> <size>`,
//! `get_default_device_pinned_mem_limit <dev>`, `quit`; and `client <pid>`, which the simulated
//! libcuda sends at `cuInit` to connect (it answers the daemon's limits and lists the client
//! for NVML's MPS process query, in `clients` in the pipe directory). No server process is
//! started: the simulated driver enforces the limits itself in each client.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const PID_FILE: &str = "nvidia-cuda-mps-control.pid";

fn pipe_dir() -> PathBuf {
    std::env::var_os("CUDA_MPS_PIPE_DIRECTORY").map_or_else(|| PathBuf::from("/tmp/nvidia-mps"), PathBuf::from)
}

fn log_dir() -> PathBuf {
    std::env::var_os("CUDA_MPS_LOG_DIRECTORY").map_or_else(|| PathBuf::from("/var/log/nvidia-mps"), PathBuf::from)
}

/// A path to `dir/name` short enough for a socket address (108 bytes), whatever `dir`'s length:
/// through an open descriptor of `dir`, which the returned `File` keeps open.
fn short_path(dir: &Path, name: &str) -> std::io::Result<(std::fs::File, PathBuf)> {
    use std::os::fd::AsRawFd;
    let d = std::fs::File::open(dir)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()));
    Ok((d, path))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => client(),
        Some("-f") => daemon(None),
        Some("-d") => background(),
        Some(other) => {
            eprintln!("nvidia-cuda-mps-control: unknown option {other} (use -d, -f, or none for the client)");
            ExitCode::from(1)
        }
    }
}

/// Each line of standard input to the daemon, one connection per command.
fn client() -> ExitCode {
    let socket = pipe_dir().join("control");
    let mut failed = false;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match ask(&socket, line) {
            Ok(answer) => {
                if let Some(e) = answer.strip_prefix("error: ") {
                    eprintln!("{}", e.trim_end());
                    failed = true;
                } else if !answer.is_empty() {
                    print!("{answer}");
                }
            }
            Err(e) => {
                eprintln!("Cannot find MPS control daemon process ({}: {e})", socket.display());
                return ExitCode::from(1);
            }
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

fn ask(socket: &Path, command: &str) -> std::io::Result<String> {
    let dir = socket.parent().unwrap_or(Path::new("."));
    let name = socket.file_name().and_then(|n| n.to_str()).unwrap_or("control");
    let (_dir, short) = short_path(dir, name)?;
    let mut s = UnixStream::connect(short)?;
    s.write_all(format!("{command}\n").as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// `-d`: the daemon in a child that leaves the session; the parent returns once it answers.
fn background() -> ExitCode {
    let (r, w) = {
        let mut fds = [0; 2];
        // SAFETY: a valid array of two ints for pipe(2).
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            eprintln!("nvidia-cuda-mps-control: pipe: {}", std::io::Error::last_os_error());
            return ExitCode::from(1);
        }
        (fds[0], fds[1])
    };
    // SAFETY: single-threaded here; the child only runs the daemon.
    match unsafe { libc::fork() } {
        -1 => ExitCode::from(1),
        0 => {
            // SAFETY: closing our copy of the read end; setsid has no preconditions.
            unsafe {
                libc::close(r);
                libc::setsid();
            }
            daemon(Some(w))
        }
        _ => {
            // SAFETY: closing our copy of the write end.
            unsafe { libc::close(w) };
            let mut byte = [0u8; 1];
            // SAFETY: reading one byte into a valid buffer; the child writes it when ready.
            let n = unsafe { libc::read(r, byte.as_mut_ptr().cast(), 1) };
            if n == 1 && byte[0] == b'1' { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
    }
}

struct Limits {
    thread_percentage: String,
    pinned: Vec<(String, String)>,
}

fn daemon(ready: Option<libc::c_int>) -> ExitCode {
    let signal_ready = |ok: bool| {
        if let Some(fd) = ready {
            let b = if ok { b"1" } else { b"0" };
            // SAFETY: writing one byte from a valid buffer to our pipe end, then closing it.
            unsafe {
                libc::write(fd, b.as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
    };
    let pipe = pipe_dir();
    let logs = log_dir();
    let _ = std::fs::create_dir_all(&pipe);
    let _ = std::fs::create_dir_all(&logs);
    let log = |line: &str| {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(logs.join("control.log")) {
            let _ = writeln!(f, "[{}] {line}", std::process::id());
        }
    };
    let socket = pipe.join("control");
    if ask(&socket, "get_server_list").is_ok() {
        eprintln!("An instance of this daemon is already running");
        signal_ready(false);
        return ExitCode::from(1);
    }
    let _ = std::fs::remove_file(&socket);
    let listener = match short_path(&pipe, "control").and_then(|(_dir, short)| UnixListener::bind(short)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("nvidia-cuda-mps-control: {}: {e}", socket.display());
            signal_ready(false);
            return ExitCode::from(1);
        }
    };
    let _ = std::fs::write(pipe.join(PID_FILE), format!("{}\n", std::process::id()));
    let _ = std::fs::write(pipe.join("clients"), "");
    log(&format!(
        "Control daemon started (CUDA_VISIBLE_DEVICES={})",
        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()
    ));
    signal_ready(true);
    let mut limits = Limits { thread_percentage: "100.0".to_owned(), pinned: Vec::new() };
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut line = String::new();
        let _ = BufReader::new(&conn).read_line(&mut line);
        let line = line.trim();
        log(&format!("Command {line}"));
        let (answer, quit) = answer(line, &mut limits, &pipe);
        let _ = conn.write_all(answer.as_bytes());
        drop(conn);
        if quit {
            break;
        }
    }
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(pipe.join(PID_FILE));
    let _ = std::fs::remove_file(pipe.join("clients"));
    log("Control daemon exiting");
    ExitCode::SUCCESS
}

fn answer(line: &str, limits: &mut Limits, pipe: &Path) -> (String, bool) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let ok = |s: String| (s, false);
    match words.as_slice() {
        ["get_server_list"] => ok(String::new()),
        ["quit"] => (String::new(), true),
        ["set_default_active_thread_percentage", p] => match p.parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 100.0 => {
                limits.thread_percentage = format!("{v:.1}");
                ok(format!("{}\n", limits.thread_percentage))
            }
            _ => ok(format!("error: invalid active thread percentage {p}\n")),
        },
        ["get_default_active_thread_percentage"] => ok(format!("{}\n", limits.thread_percentage)),
        ["set_default_device_pinned_mem_limit", dev, size] => {
            limits.pinned.retain(|(d, _)| d != dev);
            limits.pinned.push(((*dev).to_owned(), (*size).to_owned()));
            ok(String::new())
        }
        ["get_default_device_pinned_mem_limit", dev] => {
            ok(limits.pinned.iter().find(|(d, _)| d == dev).map_or_else(String::new, |(_, s)| format!("{s}\n")))
        }
        ["client", pid] if pid.parse::<u32>().is_ok() => {
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(pipe.join("clients")) {
                let _ = writeln!(f, "{pid}");
            }
            let pinned = limits.pinned.iter().find(|(d, _)| d == "0").map_or("0", |(_, s)| s.as_str());
            ok(format!("thread_percentage={}\npinned_device_mem_limit={pinned}\n", limits.thread_percentage))
        }
        _ => ok(format!("error: unrecognized command: {line}\n")),
    }
}
