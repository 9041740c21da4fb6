//! `gpuslice-cdi top`: a live terminal table of the guard's metrics, for a box without
//! Prometheus: per GPU its memory and what its slices promise; per slice its memory (the
//! driver's count against the limit, as a bar), its share, the GPU time it used and the time it
//! was held back (both as percentages of the time between two frames, from the counters), its
//! processes and refused allocations; per container its memory and GPU time.
//!
//! It reads the same numbers Prometheus would: one `GET /metrics` from the guard
//! (`gpuslice-cdi daemon`) per frame, at the config's `[guard] metrics` or `--metrics`. Nothing
//! else is read, so it needs no privilege and cannot disturb the guard. Rates need two frames:
//! the first frame shows `-` for them (`--once` takes two, one interval apart).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// The samples of an exposition (Prometheus or OpenMetrics text). Lines that are not
/// samples are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample {
                name: name.to_owned(),
                labels: BTreeMap::new(),
                value: value.split_whitespace().next()?.parse().ok()?,
            });
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    let end;
    loop {
        // key="value", with \" \\ \n escapes in the value.
        let start = chars.peek()?.0;
        let eq = rest[start..].find('=')? + start;
        let key = rest[start..eq].trim_start_matches(',').trim().to_owned();
        while chars.next()?.0 < eq + 1 {}
        let mut value = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        match chars.next()? {
            (i, '}') => {
                end = i;
                break;
            }
            (_, ',') => {
                if chars.peek().is_some_and(|&(_, c)| c == '}') {
                    end = chars.next()?.0;
                    break;
                }
            }
            _ => return None,
        }
    }
    let value = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `GET /metrics` from `addr`.
pub fn fetch(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to the guard's metrics at {addr} (is gpuslice-cdi daemon running?)"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.take(64 << 20).read_to_end(&mut raw).with_context(|| format!("reading the metrics from {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { bail!("{addr}: not an HTTP response") };
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1).is_none_or(|c| c != "200") {
        bail!("{addr}: {status}");
    }
    Ok(body.to_owned())
}

/// One look at the metrics.
#[derive(Debug, Clone)]
pub struct Frame {
    pub at: Instant,
    pub samples: Vec<Sample>,
}

impl Frame {
    fn find<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        self.find(name).find(|s| want.iter().all(|(k, v)| s.label(k) == *v)).map(|s| s.value)
    }
}

fn gib(bytes: f64) -> String {
    format!("{:.1}", bytes / (1u64 << 30) as f64)
}

/// `[#####.....]`, `width` cells filled by `part` of `whole`.
fn bar(part: f64, whole: f64, width: usize) -> String {
    let filled =
        if whole > 0.0 { ((part / whole) * width as f64).round().clamp(0.0, width as f64) as usize } else { 0 };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// A counter's increase per second between two frames, as a percentage.
fn percent(prev: Option<&Frame>, cur: &Frame, name: &str, want: &[(&str, &str)]) -> String {
    let Some(prev) = prev else { return "-".into() };
    let (Some(a), Some(b)) = (prev.value(name, want), cur.value(name, want)) else { return "-".into() };
    let secs = cur.at.saturating_duration_since(prev.at).as_secs_f64();
    if secs <= 0.0 || b < a {
        return "-".into();
    }
    format!("{:.0}%", (b - a) / secs * 100.0)
}

/// One screen: a heading per GPU, a row per slice, an indented row per container.
pub fn render(prev: Option<&Frame>, cur: &Frame) -> String {
    let mut out = String::new();
    let mut gpus: Vec<&Sample> = cur.find("gpuslice_gpu_memory_total_bytes").collect();
    gpus.sort_by_key(|s| s.label("gpu_index").parse::<u32>().unwrap_or(u32::MAX));
    let mut slices: Vec<&Sample> = cur.find("gpuslice_slice_memory_limit_bytes").collect();
    slices.sort_by_key(|s| crate::guard::observe::natural_key(s.label("slice")));
    for g in gpus {
        let idx = g.label("gpu_index");
        let gl = [("gpu_index", idx)];
        let used = cur.value("gpuslice_gpu_memory_used_bytes", &gl).unwrap_or(0.0);
        let promised = cur.value("gpuslice_gpu_memory_promised_bytes", &gl).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "GPU {idx}  {}  memory {}/{} GiB  promised to slices {} GiB{}",
            g.label("gpu_uuid"),
            gib(used),
            gib(g.value),
            gib(promised),
            if promised > g.value { " (overcommitted)" } else { "" }
        );
        let _ = writeln!(
            out,
            "  {:<10} {:<24} {:>13} {:>10} {:>6} {:>9} {:>10} {:>6} {:>8}",
            "SLICE", "MEMORY (DRIVER)", "GIB", "CHARGED", "SHARE", "GPU TIME", "HELD BACK", "PROCS", "REFUSED"
        );
        for s in slices.iter().filter(|s| s.label("gpu_index") == idx) {
            let name = s.label("slice");
            let sl = [("slice", name)];
            let used = cur.value("gpuslice_slice_memory_used_bytes", &sl).unwrap_or(0.0);
            let charged = cur.value("gpuslice_slice_memory_charged_bytes", &sl).map_or_else(|| "-".into(), gib);
            let share = cur
                .value("gpuslice_slice_compute_share_ratio", &sl)
                .map_or_else(|| "-".into(), |r| format!("{:.0}%", r * 100.0));
            let refused = cur
                .value("gpuslice_slice_refused_allocations_total", &sl)
                .map_or_else(|| "-".into(), |r| format!("{r:.0}"));
            let procs = cur.value("gpuslice_slice_processes", &sl).unwrap_or(0.0);
            let readable = cur.value("gpuslice_region_readable", &sl);
            let _ = writeln!(
                out,
                "  {:<10} {:<24} {:>13} {:>10} {:>6} {:>9} {:>10} {:>6} {:>8}{}",
                name,
                bar(used, s.value, 20),
                format!("{}/{}", gib(used), gib(s.value)),
                charged,
                share,
                percent(prev, cur, "gpuslice_slice_gpu_time_seconds_total", &sl),
                percent(prev, cur, "gpuslice_slice_held_back_seconds_total", &sl),
                format!("{procs:.0}"),
                refused,
                if readable == Some(0.0) { "  region damaged" } else { "" }
            );
            let mut containers: Vec<&Sample> =
                cur.find("gpuslice_memory_used_bytes").filter(|c| c.label("slice") == name).collect();
            containers.sort_by(|a, b| a.label("container").cmp(b.label("container")));
            for c in containers {
                let id = c.label("container_id");
                let cl = [("slice", name), ("container_id", id)];
                let short: String = id.chars().take(12).collect();
                let who = if c.label("container") == short {
                    short.clone()
                } else {
                    format!("{} ({short})", c.label("container"))
                };
                let _ = writeln!(
                    out,
                    "    {:<33} {:>13} {:>10} {:>6} {:>9}",
                    who,
                    gib(c.value),
                    cur.value("gpuslice_memory_charged_bytes", &cl).map_or_else(|| "-".into(), gib),
                    "",
                    percent(prev, cur, "gpuslice_gpu_time_seconds_total", &cl),
                );
            }
        }
    }
    if out.is_empty() {
        out.push_str("no GPUs in the guard's metrics yet\n");
    }
    out
}

/// How `top` runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    pub interval: Duration,
    /// One frame (after two looks, for the rates), then exit.
    pub once: bool,
}

/// Runs `top` on standard output until interrupted (or one frame with `once`).
pub fn run(opts: &Options) -> Result<()> {
    let look = || -> Result<Frame> {
        let text = fetch(opts.addr, Duration::from_secs(5))?;
        Ok(Frame { at: Instant::now(), samples: parse(&text) })
    };
    let mut prev: Option<Frame> = None;
    let stdout = std::io::stdout();
    loop {
        let cur = look()?;
        if opts.once && prev.is_none() {
            prev = Some(cur);
            std::thread::sleep(opts.interval);
            continue;
        }
        let heading = format!(
            "gpuslice top: the guard's metrics at {}, every {:.1}s{}\n\n",
            opts.addr,
            opts.interval.as_secs_f64(),
            if opts.once { "" } else { " (Ctrl-C to quit)" }
        );
        let screen = render(prev.as_ref(), &cur);
        let mut lock = stdout.lock();
        if !opts.once {
            // Home and clear, then the frame: one write, so the screen does not flicker.
            write!(lock, "\x1b[H\x1b[2J{heading}{screen}")?;
        } else {
            write!(lock, "{heading}{screen}")?;
        }
        lock.flush()?;
        if opts.once {
            return Ok(());
        }
        prev = Some(cur);
        std::thread::sleep(opts.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP gpuslice_gpu_memory_total_bytes x.
# TYPE gpuslice_gpu_memory_total_bytes gauge
gpuslice_gpu_memory_total_bytes{gpu_uuid="GPU-0",gpu_index="0"} 85899345920.0
gpuslice_gpu_memory_used_bytes{gpu_uuid="GPU-0",gpu_index="0"} 10737418240.0
gpuslice_gpu_memory_promised_bytes{gpu_uuid="GPU-0",gpu_index="0"} 85899345920.0
gpuslice_slice_memory_limit_bytes{slice="slice10",gpu_uuid="GPU-0",gpu_index="0"} 42949672960.0
gpuslice_slice_memory_limit_bytes{slice="slice9",gpu_uuid="GPU-0",gpu_index="0"} 42949672960.0
gpuslice_slice_memory_used_bytes{slice="slice9",gpu_uuid="GPU-0",gpu_index="0"} 10737418240.0
gpuslice_slice_memory_charged_bytes{slice="slice9",gpu_uuid="GPU-0",gpu_index="0"} 10737418240.0
gpuslice_slice_compute_share_ratio{slice="slice9",gpu_uuid="GPU-0",gpu_index="0"} 0.5
gpuslice_slice_processes{slice="slice9",gpu_uuid="GPU-0",gpu_index="0"} 1.0
gpuslice_slice_refused_allocations_total{slice="slice9",gpu_uuid="GPU-0",gpu_index="0"} 2.0
gpuslice_slice_gpu_time_seconds_total{slice="slice9",gpu_uuid="GPU-0",gpu_index="0"} GT
gpuslice_region_readable{slice="slice10",gpu_uuid="GPU-0",gpu_index="0"} 0.0
gpuslice_memory_used_bytes{slice="slice9",gpu_uuid="GPU-0",gpu_index="0",container="web \"1\"",container_id="0123456789abcdef",pod="",namespace=""} 10737418240.0
# EOF
"#;

    fn frame(gpu_time: f64, at: Instant) -> Frame {
        Frame { at, samples: parse(&TEXT.replace("GT", &gpu_time.to_string())) }
    }

    #[test]
    fn parses_labels_with_escapes() {
        let f = frame(1.0, Instant::now());
        let c = f.find("gpuslice_memory_used_bytes").next().unwrap();
        assert_eq!(c.label("container"), "web \"1\"");
        assert_eq!(c.label("pod"), "");
        assert_eq!(c.value, 10737418240.0);
        assert_eq!(f.samples.len(), 13);
        assert_eq!(parse("up 1\nbad{x=\"1\" 2\n"), [Sample { name: "up".into(), labels: BTreeMap::new(), value: 1.0 }]);
    }

    #[test]
    fn a_frame_shows_slices_containers_bars_and_rates() {
        let t0 = Instant::now();
        let (a, b) = (frame(10.0, t0), frame(12.0, t0 + Duration::from_secs(4)));
        let screen = render(Some(&a), &b);
        let lines: Vec<&str> = screen.lines().collect();
        assert!(lines[0].starts_with("GPU 0  GPU-0  memory 10.0/80.0 GiB  promised to slices 80.0 GiB"), "{screen}");
        assert!(!lines[0].contains("overcommitted"));
        let s9 = lines.iter().position(|l| l.trim_start().starts_with("slice9")).unwrap();
        let s10 = lines.iter().position(|l| l.trim_start().starts_with("slice10")).unwrap();
        assert!(s9 < s10, "slice9 before slice10:\n{screen}");
        let row = lines[s9];
        assert!(row.contains("[#####...............]") && row.contains("10.0/40.0"), "{row}");
        assert!(row.contains(" 50% ") && row.contains(" 50% ") && row.ends_with(" 2"), "2 s of GPU time in 4 s: {row}");
        assert!(lines[s9 + 1].contains("web \"1\" (0123456789ab)") && lines[s9 + 1].contains("10.0"), "{screen}");
        assert!(lines[s10].ends_with("region damaged"), "{screen}");
        // The first frame has no rates.
        assert!(render(None, &b).lines().nth(s9).unwrap().contains(" - "), "{}", render(None, &b));
    }
}
