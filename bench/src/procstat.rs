//! What the coordinator and PostgreSQL cost while a scenario runs, read from
//! /proc: CPU time of every process named `camp-server` or `postgres` (the
//! bench runs on the same machine, loopback only), and the coordinator's RSS.

use std::fs;
use std::time::Instant;

/// Clock ticks per second of /proc/PID/stat's times (Linux: USER_HZ, 100 everywhere we run).
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default)]
struct Ticks {
    coordinator: u64,
    database: u64,
}

/// (comm, utime + stime, rss in KiB) of each process.
fn processes() -> Vec<(String, u64, u64)> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // comm is in parentheses and may hold spaces: the fields after it are space-separated.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // After comm: state is field 0; utime and stime are fields 11 and 12; rss (pages) is 21.
        let parse = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        out.push((comm, parse(11) + parse(12), parse(21) * 4));
    }
    out
}

/// A coordinator process (its binary may be a renamed copy: `camp-server-before`).
fn is_coordinator(comm: &str) -> bool {
    comm.starts_with("camp-server")
}

/// Waits (at most `within`) until the coordinator and the database are idle:
/// below 5% of a core over a quarter of a second.
pub async fn settle(within: std::time::Duration) {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let meter = CpuMeter::start();
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let share = meter.stop();
        if share.coordinator + share.database < 5.0 {
            return;
        }
    }
}

fn ticks() -> Ticks {
    let mut t = Ticks::default();
    for (comm, cpu, _) in processes() {
        if is_coordinator(&comm) {
            t.coordinator += cpu;
        } else if comm.starts_with("postgres") {
            t.database += cpu;
        }
    }
    t
}

/// The coordinator's resident memory in MiB (the largest `camp-server` process).
pub fn coordinator_rss_mib() -> f64 {
    processes().into_iter().filter(|(c, _, _)| is_coordinator(c)).map(|(_, _, rss)| rss).max().unwrap_or(0) as f64 / 1024.0
}

/// CPU used from `start` until `stop`, as percent of one core.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuShare {
    pub coordinator: f64,
    pub database: f64,
}

pub struct CpuMeter {
    started: Instant,
    at_start: Ticks,
}

impl CpuMeter {
    pub fn start() -> Self {
        CpuMeter { started: Instant::now(), at_start: ticks() }
    }

    pub fn stop(&self) -> CpuShare {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let now = ticks();
        let share = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / TICKS_PER_SEC / secs * 100.0;
        CpuShare { coordinator: share(self.at_start.coordinator, now.coordinator), database: share(self.at_start.database, now.database) }
    }
}
