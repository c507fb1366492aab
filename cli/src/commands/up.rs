//! `camp up`: the whole service on one machine in one command — a coordinator
//! on the embedded store (SQLite, unless `--database-url` names another) and
//! one worker per GPU (or one CPU worker), on loopback, as child processes
//! (`camp-server` and `camp-worker`, found beside `camp` or on the PATH). It
//! serves the address every other command talks to (`--addr`), so `camp
//! submit` and `camp pipeline camp` work as on a cluster. Ctrl-C (or SIGTERM)
//! stops it cleanly: the workers checkpoint and hand their jobs back, then the
//! coordinator stops; a job resumes where it was at the next `camp up`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::process::{Child, Command};

use crate::exit::UsageError;
use crate::global_opts::GlobalOpts;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the coordinator keeps its state [default: the coordinator's own, sqlite://$XDG_DATA_HOME/camp/camp.db].
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Folder holding the data sets (cifar10/, cifar100/, fashion-mnist/) [default: $XDG_DATA_HOME/camp/data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Workers to start: one per GPU by default (each on its own cuda:N), or one CPU worker when there is no GPU.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: Option<u32>,
    /// Train on the CPU even where GPUs are present.
    #[arg(long)]
    pub cpu: bool,
    /// Folder for the coordinator's and workers' logs [default: $XDG_DATA_HOME/camp/logs].
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Where the coordinator serves the dashboard (web pages of jobs, experiments and workers); loopback only
    /// [default: 127.0.0.1:8080, when that port is free].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_dashboard")]
    pub dashboard: Option<String>,
    /// Serve no dashboard.
    #[arg(long)]
    pub no_dashboard: bool,
}

/// `$XDG_DATA_HOME/camp` (`~/.local/share/camp`), as the coordinator picks it.
fn data_home() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("camp")
}

/// The loopback address `--addr` names: the coordinator listens there.
fn listen_address(addr: &str) -> Result<SocketAddr, UsageError> {
    let rest = addr
        .strip_prefix("http://")
        .ok_or_else(|| UsageError(format!("--addr {addr}: camp up serves plain http:// on loopback (TLS is for a cluster)")))?;
    let socket: SocketAddr =
        rest.trim_end_matches('/').parse().map_err(|_| UsageError(format!("--addr {addr}: expected http://127.0.0.1:PORT")))?;
    if !socket.ip().is_loopback() {
        return Err(UsageError(format!("--addr {addr}: camp up listens on loopback only (a cluster needs --require-auth)")));
    }
    Ok(socket)
}

/// Where `camp up` serves the dashboard unless told otherwise.
const DEFAULT_DASHBOARD_PORT: u16 = 8080;

/// The dashboard's address: a loopback socket address (camp up serves no one else).
fn dashboard_address(addr: &str) -> Result<SocketAddr, UsageError> {
    let socket: SocketAddr = addr.parse().map_err(|_| UsageError(format!("--dashboard {addr}: expected 127.0.0.1:PORT")))?;
    if !socket.ip().is_loopback() {
        return Err(UsageError(format!("--dashboard {addr}: camp up serves on loopback only")));
    }
    Ok(socket)
}

/// A sibling of this executable, else the name for the PATH to resolve.
fn binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The machine's GPUs as the driver lists them (none without one).
fn gpu_count() -> u32 {
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).lines().filter(|line| line.starts_with("GPU ")).count() as u32)
        .unwrap_or(0)
}

/// The device of each worker: cuda:0..N-1, or the CPU.
fn worker_devices(args: &UpArgs, gpus: u32) -> Vec<String> {
    if args.cpu || gpus == 0 {
        return vec!["cpu".to_string(); args.workers.unwrap_or(1) as usize];
    }
    (0..args.workers.unwrap_or(gpus)).map(|i| format!("cuda:{}", i % gpus)).collect()
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    let path = dir.join(name);
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

pub async fn run(opts: &GlobalOpts, args: &UpArgs) -> anyhow::Result<()> {
    let listen = listen_address(&opts.addr)?;
    let home = data_home();
    let data_dir = args.data_dir.clone().unwrap_or_else(|| home.join("data"));
    let log_dir = args.log_dir.clone().unwrap_or_else(|| home.join("logs"));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;

    let dashboard = match (&args.dashboard, args.no_dashboard) {
        (_, true) => None,
        (Some(addr), false) => Some(dashboard_address(addr)?),
        // The default port may be someone else's: then no dashboard, rather than no camp.
        (None, false) => {
            let default = SocketAddr::from(([127, 0, 0, 1], DEFAULT_DASHBOARD_PORT));
            match std::net::TcpListener::bind(default) {
                Ok(probe) => {
                    drop(probe);
                    Some(default)
                }
                Err(e) => {
                    eprintln!("camp up: no dashboard: {default} is not free ({e}); --dashboard ADDR picks another");
                    None
                }
            }
        }
    };
    let mut server = Command::new(binary("camp-server"));
    server.arg("--listen").arg(listen.to_string()).env_remove("DATABASE_URL").env_remove("CAMP_HTTP_LISTEN");
    if let Some(addr) = dashboard {
        server.arg("--http-listen").arg(addr.to_string());
    }
    if let Some(url) = &args.database_url {
        server.arg("--database-url").arg(url);
    }
    let server_log = log_dir.join("server.log");
    let mut server = server
        .stderr(log_file(&log_dir, "server.log")?)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting camp-server")?;
    wait_until_listening(listen, &mut server, &server_log).await?;

    let devices = worker_devices(args, gpu_count());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "local".into());
    let mut workers = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        let name = if devices.len() == 1 { host.clone() } else { format!("{host}-{i}") };
        let worker = Command::new(binary("camp-worker"))
            .arg("--coordinator")
            .arg(&opts.addr)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--device")
            .arg(device)
            .arg("--name")
            .arg(&name)
            .env_remove("CAMP_TOKEN")
            .stderr(log_file(&log_dir, &format!("worker-{i}.log"))?)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting camp-worker")?;
        workers.push((name, device.clone(), worker));
    }
    eprintln!("camp is up on {}: a coordinator and {} worker(s) ({})", opts.addr, workers.len(), devices.join(", "));
    eprintln!("  data sets: {}   logs: {}", data_dir.display(), log_dir.display());
    if let Some(addr) = dashboard {
        eprintln!("  dashboard: http://{addr}/");
    }
    eprintln!("  submit from another terminal: camp submit ... / camp pipeline camp ...; Ctrl-C stops everything");

    let stopped_early = tokio::select! {
        _ = stop_signal() => None,
        status = server.wait() => Some(format!("camp-server stopped ({}); see {}", status.map_or_else(|e| e.to_string(), |s| s.to_string()), server_log.display())),
        (i, status) = first_exit(&mut workers) => Some(format!("worker {i} stopped ({status}); see {}", log_dir.join(format!("worker-{i}.log")).display())),
    };
    eprintln!("stopping: the workers checkpoint and hand their jobs back");
    for (_, _, worker) in &workers {
        terminate(worker);
    }
    for (name, _, worker) in &mut workers {
        if tokio::time::timeout(Duration::from_secs(60), worker.wait()).await.is_err() {
            eprintln!("worker {name} did not stop within 60 s; killed");
            let _ = worker.kill().await;
        }
    }
    terminate(&server);
    if tokio::time::timeout(Duration::from_secs(20), server.wait()).await.is_err() {
        let _ = server.kill().await;
    }
    match stopped_early {
        Some(why) => anyhow::bail!(why),
        None => {
            eprintln!("stopped");
            Ok(())
        }
    }
}

/// Waits until the coordinator accepts connections, or says why it will not.
async fn wait_until_listening(listen: SocketAddr, server: &mut Child, log: &Path) -> anyhow::Result<()> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = server.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let last: Vec<&str> = tail.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            anyhow::bail!("camp-server exited ({status}) before listening on {listen}:\n{}", last.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("camp-server did not listen on {listen} within 30 s; see {}", log.display())
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The first worker to exit, with its status.
async fn first_exit(workers: &mut [(String, String, Child)]) -> (usize, String) {
    loop {
        for (i, (_, _, worker)) in workers.iter_mut().enumerate() {
            if let Ok(Some(status)) = worker.try_wait() {
                return (i, status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks a child to stop as a service manager would (SIGTERM).
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid this process spawned and has not reaped; no memory is involved.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_listens_where_addr_points_and_only_on_loopback() {
        assert_eq!(listen_address("http://127.0.0.1:50051").unwrap(), "127.0.0.1:50051".parse().unwrap());
        assert_eq!(listen_address("http://[::1]:7/").unwrap(), "[::1]:7".parse().unwrap());
        assert!(listen_address("https://127.0.0.1:50051").is_err());
        assert!(listen_address("http://10.0.0.1:50051").is_err());
        assert!(listen_address("http://coord:50051").is_err());
    }

    #[test]
    fn one_worker_per_gpu_or_one_on_the_cpu() {
        let args =
            |workers, cpu| UpArgs { database_url: None, data_dir: None, workers, cpu, log_dir: None, dashboard: None, no_dashboard: false };
        assert_eq!(worker_devices(&args(None, false), 0), ["cpu"]);
        assert_eq!(worker_devices(&args(None, false), 2), ["cuda:0", "cuda:1"]);
        assert_eq!(worker_devices(&args(None, true), 2), ["cpu"]);
        assert_eq!(worker_devices(&args(Some(3), false), 2), ["cuda:0", "cuda:1", "cuda:0"]);
        assert_eq!(worker_devices(&args(Some(2), false), 0), ["cpu", "cpu"]);
    }
}
