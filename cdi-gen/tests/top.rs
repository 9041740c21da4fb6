//! `gpuslice-cdi top` against a metrics endpoint serving a crafted exposition: `--once` on a
//! pipe, and the live view in a detached tmux session, its screen captured and checked.

use std::process::Command;
use std::time::{Duration, Instant};

use gpuslice_cdi::guard::metrics::{Latest, Server};

const GIB: u64 = 1 << 30;

/// slice0 (40 GiB, 50 %) with container "web" holding 10 GiB; its GPU time counter at `gpu`.
fn exposition(gpu: f64) -> String {
    let s = r#"slice="slice0",gpu_uuid="GPU-0",gpu_index="0""#;
    let c = format!(r#"{s},container="web",container_id="0123456789abcdef",pod="",namespace="""#);
    format!(
        "gpuslice_gpu_memory_total_bytes{{gpu_uuid=\"GPU-0\",gpu_index=\"0\"}} {}\n\
         gpuslice_gpu_memory_used_bytes{{gpu_uuid=\"GPU-0\",gpu_index=\"0\"}} {}\n\
         gpuslice_gpu_memory_promised_bytes{{gpu_uuid=\"GPU-0\",gpu_index=\"0\"}} {}\n\
         gpuslice_slice_memory_limit_bytes{{{s}}} {}\n\
         gpuslice_slice_memory_used_bytes{{{s}}} {}\n\
         gpuslice_slice_compute_share_ratio{{{s}}} 0.5\n\
         gpuslice_slice_processes{{{s}}} 1\n\
         gpuslice_slice_refused_allocations_total{{{s}}} 1\n\
         gpuslice_slice_gpu_time_seconds_total{{{s}}} {gpu}\n\
         gpuslice_memory_used_bytes{{{c}}} {}\n\
         # EOF\n",
        80 * GIB,
        10 * GIB,
        80 * GIB,
        40 * GIB,
        10 * GIB,
        10 * GIB
    )
}

fn serve() -> (Server, Latest) {
    let latest = Latest::default();
    latest.set(exposition(0.0));
    (Server::start("127.0.0.1:0".parse().unwrap(), latest.clone()).unwrap(), latest)
}

#[test]
fn top_once_prints_one_frame() {
    let (server, _latest) = serve();
    let out = Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"))
        .args(["top", "--once", "--interval", "0.2", "--metrics", &server.addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("GPU 0  GPU-0  memory 10.0/80.0 GiB"), "{text}");
    assert!(text.contains("slice0") && text.contains("[#####...............]"), "{text}");
    assert!(text.contains("web (0123456789ab)"), "{text}");
    assert!(!text.contains('\x1b'), "no terminal escapes with --once");
}

#[test]
fn top_without_a_guard_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpuslice-cdi"))
        .args(["top", "--once", "--metrics", "127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is gpuslice-cdi daemon running?"), "{err}");
}

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux").args(args).output().unwrap()
}

#[test]
fn top_live_in_tmux() {
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("skipped: top_live_in_tmux: no tmux");
        return;
    }
    let (server, latest) = serve();
    let session = format!("gpuslice-top-{}", std::process::id());
    let cmd = format!("{} top --interval 0.3 --metrics {}", env!("CARGO_BIN_EXE_gpuslice-cdi"), server.addr);
    let out = tmux(&["new-session", "-d", "-s", &session, "-x", "150", "-y", "30", &cmd]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = tmux(&["kill-session", "-t", &self.0]);
        }
    }
    let _kill = Kill(session.clone());
    // The counter follows the clock at half speed (updated every 50 ms): 50 % once two frames
    // are in, whatever the frames' timing.
    let start = Instant::now();
    let mut polls = 0;
    let screen = loop {
        latest.set(exposition(start.elapsed().as_secs_f64() * 0.5));
        std::thread::sleep(Duration::from_millis(50));
        polls += 1;
        if polls % 6 != 0 {
            continue;
        }
        let screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned();
        let row = screen.lines().find(|l| l.trim_start().starts_with("slice0")).unwrap_or_default().to_owned();
        if row.split_whitespace().nth(5).is_some_and(|p| p.ends_with('%') && p != "-")
            || start.elapsed() > Duration::from_secs(20)
        {
            break screen;
        }
    };
    println!("{screen}");
    assert!(screen.contains("gpuslice top: the guard's metrics at"), "{screen}");
    assert!(screen.contains("(Ctrl-C to quit)"), "{screen}");
    let row = screen.lines().find(|l| l.trim_start().starts_with("slice0")).expect("a slice0 row");
    assert!(row.contains("[#####...............]") && row.contains("10.0/40.0"), "{row}");
    let cols: Vec<&str> = row.split_whitespace().collect();
    // SLICE BAR GIB CHARGED SHARE GPU-TIME HELD PROCS REFUSED
    assert_eq!(cols[4], "50%", "share: {row}");
    let gpu_pct: f64 = cols[5].trim_end_matches('%').parse().unwrap_or_else(|_| panic!("GPU time: {row}"));
    assert!((30.0..=70.0).contains(&gpu_pct), "half of the time, shown as {gpu_pct} %: {row}");
    assert_eq!(cols[8], "1", "refused: {row}");
    assert!(screen.contains("web (0123456789ab)"), "{screen}");
}
