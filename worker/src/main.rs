//! `camp-worker`: the worker daemon (default), plus `bench` and `run` for
//! measuring and for training one job without a coordinator.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use camp_proto::endpoint::ClientTls;
use camp_worker::bench::{run_bench, BenchConfig};
use camp_worker::daemon::{self, DaemonConfig, Shutdown};
use camp_worker::device::parse_device;
use camp_worker::local::run_local;
use camp_worker::observer::StageOutcome;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(name = "camp-worker", version, about = "camp's worker: claims training jobs from a coordinator and runs them with libtorch")]
struct Cli {
    /// Coordinator address (the CLI's CAMP_ADDR; CAMP_COORDINATOR is still read, deprecated).
    #[arg(long, env = "CAMP_ADDR")]
    coordinator: Option<String>,
    /// Folder holding data sets as cifar10/, cifar100/, fashion-mnist/ (official file formats).
    #[arg(long, env = "CAMP_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Training device: cpu, cuda or cuda:N. CUDA never falls back to the CPU.
    #[arg(long, env = "CAMP_DEVICE", default_value = "cpu")]
    device: String,
    /// Name shown in `camp workers` (default: the host name).
    #[arg(long, env = "CAMP_WORKER_NAME")]
    name: Option<String>,
    /// Labels as key=value, repeatable.
    #[arg(long = "label", value_parser = camp_proto::limits::parse_label)]
    labels: Vec<(String, String)>,
    /// CPU threads libtorch may use (default: all cores).
    #[arg(long, env = "CAMP_THREADS")]
    threads: Option<i32>,
    /// API token (a worker credential: `camp-server token --worker`), when the coordinator requires one.
    #[arg(long, env = "CAMP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA to check an https:// coordinator's certificate against (default: the system's roots).
    #[arg(long, env = "CAMP_CA")]
    ca: Option<PathBuf>,
    /// PEM client certificate for a coordinator that requires mutual TLS (with --tls-key).
    #[arg(long, env = "CAMP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CAMP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Folder for the worker's id, kept across restarts so that a restarted worker keeps
    /// its registration (default: $XDG_STATE_HOME/camp-worker, else ~/.local/state/camp-worker).
    #[arg(long, env = "CAMP_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Exit (status 0) after SECS holding no job and claiming none, e.g. to give a
    /// Slurm allocation back when the queue is empty.
    #[arg(long, env = "CAMP_EXIT_WHEN_IDLE", value_name = "SECS")]
    exit_when_idle: Option<u64>,
    /// Exit (status 0) after N attempts have finished, however they ended.
    #[arg(long, env = "CAMP_MAX_JOBS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_jobs: Option<u32>,
    /// How long one call to the coordinator is retried through transient failures
    /// before the worker gives up on it (a checkpoint download then hands the job back
    /// to the queue). Registering and claiming wait for the coordinator for ever.
    #[arg(long, env = "CAMP_RETRY_FOR", value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    retry_for: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print training and evaluation images/s of an architecture on random data.
    Bench {
        #[arg(short = 'a', long, default_value = "preact_resnet44_cifar")]
        arch: String,
        #[arg(short = 'b', long, default_value_t = 128)]
        batch: i64,
        /// bf16 autocast (CUDA).
        #[arg(long)]
        bf16: bool,
        #[arg(long)]
        channels_last: bool,
        /// Quantisation-aware training at this many bits (weights and activations);
        /// with --dualpath, the basic path's bits.
        #[arg(long)]
        bits: Option<u32>,
        /// The dual-path network's sp training step (1-bit and 4-bit paths, gates).
        #[arg(long)]
        dualpath: bool,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        warmup_steps: usize,
        /// Then profile this many training steps: host ops per step, the GPU's
        /// busy time and its costliest kernels.
        #[arg(long, value_name = "STEPS", default_value_t = 0)]
        profile: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Train one job from a YAML spec, with no coordinator; checkpoints go to --out.
    Run {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long, default_value = "camp-run")]
        out: PathBuf,
        /// Continue from --out/latest.safetensors if present.
        #[arg(long)]
        resume: bool,
        /// Start from this checkpoint's weights (e.g. a qat run's best.safetensors for sp).
        #[arg(long, value_name = "FILE")]
        init: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(threads) = cli.threads {
        anyhow::ensure!(threads > 0, "--threads must be at least 1");
        tch::set_num_threads(threads);
    }
    let device = parse_device(&cli.device).with_context(|| format!("--device {}", cli.device))?;
    match cli.command {
        Some(Command::Bench { arch, batch, bf16, channels_last, bits, dualpath, steps, warmup_steps, profile, json }) => {
            let config = BenchConfig {
                arch,
                batch,
                device,
                bf16,
                channels_last,
                warmup_steps,
                steps,
                bits,
                dual_path: dualpath,
                profile_steps: profile,
            };
            let report = run_bench(&config)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
        Some(Command::Run { spec, out, resume, init }) => match run_local(&spec, &cli.data_dir, device, &out, resume, init.as_deref())? {
            StageOutcome::Completed(_) => Ok(()),
            _ => anyhow::bail!("run stopped before the end"),
        },
        None => run_daemon(cli, device),
    }
}

fn run_daemon(cli: Cli, device: tch::Device) -> anyhow::Result<()> {
    let name = cli.name.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "worker".into())
    });
    let tls = ClientTls { ca: cli.ca, cert: cli.tls_cert, key: cli.tls_key };
    let config = DaemonConfig {
        coordinator: coordinator_address(cli.coordinator),
        data_dir: cli.data_dir,
        device,
        name,
        labels: cli.labels,
        token: cli.token,
        tls,
        state_dir: cli.state_dir.or_else(default_state_dir),
        exit_when_idle: cli.exit_when_idle.map(Duration::from_secs),
        max_jobs: cli.max_jobs,
        retry_for: Duration::from_secs(cli.retry_for),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = Shutdown { flag: Arc::new(AtomicBool::new(false)), signal: Arc::new(tokio::sync::Notify::new()) };
        {
            let shutdown = shutdown.clone();
            // SIGUSR1 and SIGHUP too: Slurm's `--signal=B:USR1@180` warns a job
            // before its time runs out; a hang-up ends the session it ran in.
            let mut term = signal(SignalKind::terminate())?;
            let mut usr1 = signal(SignalKind::user_defined1())?;
            let mut hup = signal(SignalKind::hangup())?;
            tokio::spawn(async move {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = usr1.recv() => "SIGUSR1",
                    _ = hup.recv() => "SIGHUP",
                    _ = tokio::signal::ctrl_c() => "SIGINT",
                };
                tracing::info!("{name} received: finishing the current step, then checkpointing and handing the job back");
                shutdown.flag.store(true, Ordering::SeqCst);
                shutdown.signal.notify_waiters();
                shutdown.signal.notify_one();
            });
        }
        daemon::run(config, shutdown).await?;
        Ok(())
    })
}

/// `$XDG_STATE_HOME/camp-worker`, else `$HOME/.local/state/camp-worker`.
fn default_state_dir() -> Option<PathBuf> {
    let non_empty = |var| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    non_empty("XDG_STATE_HOME").or_else(|| non_empty("HOME").map(|home| home.join(".local/state"))).map(|dir| dir.join("camp-worker"))
}

/// `--coordinator`, else `CAMP_ADDR` (clap reads both), else the deprecated
/// `CAMP_COORDINATOR`, else the local default.
fn coordinator_address(given: Option<String>) -> String {
    given
        .or_else(|| {
            let old = std::env::var("CAMP_COORDINATOR").ok().filter(|a| !a.is_empty())?;
            eprintln!("warning: CAMP_COORDINATOR is deprecated: set CAMP_ADDR (as for the camp CLI)");
            Some(old)
        })
        .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned())
}
