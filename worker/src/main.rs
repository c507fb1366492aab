//! `camp-worker`: the worker daemon (default), plus `bench` and `run` for
//! measuring and for training one job without a coordinator.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use camp_proto::endpoint::ClientTls;
use camp_worker::bench::{run_bench, run_bench_slots, BenchConfig};
use camp_worker::daemon::{self, DaemonConfig, Shutdown};
use camp_worker::device::{cuda_device_count, parse_device};
use camp_worker::local::run_local;
use camp_worker::observer::StageOutcome;
use camp_worker::parallel::{run_follower, FollowerArgs};
use camp_worker::slots::{pass_on, Slots};
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
    /// Devices one job may train on, from --device on: a job of `gpus: N` runs
    /// N ranks, one per device, and is offered only to a worker with at least N.
    /// Default: every visible GPU for `--device cuda`, else 1. On the CPU, N
    /// ranks share the cores (Gloo).
    #[arg(long, env = "CAMP_DEVICES", value_parser = clap::value_parser!(u32).range(1..=i64::from(camp_proto::limits::MAX_GPUS)))]
    devices: Option<u32>,
    /// Jobs at once on --device: N worker processes side by side, each claiming
    /// and training its own job (a small network leaves a GPU mostly idle). Each
    /// registers as a worker (`camp workers` lists N rows of this name). With
    /// `bench`: one job alone, then N at once, and the images/s of both.
    #[arg(long, env = "CAMP_SLOTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    slots: u32,
    /// Which slot this process is (given by slot 0 to the others).
    #[arg(long, hide = true, global = true)]
    slot: Option<u32>,
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
        /// Capture the training step in a CUDA graph and replay it; first check
        /// that replayed steps end where eager ones do (refused on the CPU).
        #[arg(long)]
        cuda_graph: bool,
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
        /// A spec of several ranks (`gpus`): train every rank's shard in this one
        /// process in turn, instead of one process per rank.
        #[arg(long)]
        one_process: bool,
    },
    /// One rank (1..N) of a data-parallel job, started by rank 0 (the daemon or `run`).
    #[command(hide = true)]
    Rank {
        /// The folder rank 0 wrote the spec and checkpoints to.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        rank: i64,
        #[arg(long)]
        world: i64,
        /// Rank 0's rendezvous port on loopback.
        #[arg(long)]
        port: u16,
        /// Write this rank's final state here.
        #[arg(long)]
        out: Option<PathBuf>,
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
        Some(Command::Bench { arch, batch, bf16, channels_last, bits, dualpath, steps, warmup_steps, profile, json, cuda_graph }) => {
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
                cuda_graph,
            };
            if cli.slots > 1 && cli.slot.is_none() {
                let report = run_bench_slots(&config, cli.slots, &cli.device, cli.threads)?;
                match json {
                    true => println!("{}", serde_json::to_string(&report)?),
                    false => println!("{report}"),
                }
                return Ok(());
            }
            let report = run_bench(&config)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
        Some(Command::Run { spec, out, resume, init, one_process }) => {
            match run_local(&spec, &cli.data_dir, device, &out, resume, init.as_deref(), one_process)? {
                StageOutcome::Completed(_) => Ok(()),
                _ => anyhow::bail!("run stopped before the end"),
            }
        }
        Some(Command::Rank { dir, rank, world, port, out }) => {
            let args = FollowerArgs { dir, rank, world, port, out };
            run_follower(&args, &cli.data_dir, device).with_context(|| format!("rank {rank} of {world}"))
        }
        None => {
            let devices = devices_of(&cli.device, device, cli.devices)?;
            anyhow::ensure!(cli.slots == 1 || devices == 1, "--slots {} with --devices {devices}: slots share one device", cli.slots);
            // Slot 0 starts the others before its runtime, from the main thread (crate::slots).
            let slots = match cli.slot {
                None if cli.slots > 1 => Some(Slots::spawn(cli.slots, &std::env::args_os().skip(1).collect::<Vec<_>>(), false)?),
                _ => None,
            };
            let pids = slots.as_ref().map(Slots::pids).unwrap_or_default();
            let ran = run_daemon(cli, device, devices, pids);
            for (slot, status) in slots.map(Slots::wait).unwrap_or_default() {
                match status {
                    Ok(status) if status.success() => {}
                    Ok(status) => tracing::warn!("slot {slot} ended: {status}"),
                    Err(e) => tracing::warn!("slot {slot}: {e}"),
                }
            }
            ran
        }
    }
}

/// `--devices`, checked against the CUDA devices there are; by default every
/// visible GPU for `--device cuda`, else 1.
fn devices_of(name: &str, device: tch::Device, given: Option<u32>) -> anyhow::Result<u32> {
    let tch::Device::Cuda(first) = device else { return Ok(given.unwrap_or(1)) };
    let count = cuda_device_count();
    let devices = given.unwrap_or(if name.trim() == "cuda" { (count - first) as u32 } else { 1 });
    anyhow::ensure!(
        first + devices as usize <= count,
        "--devices {devices} from cuda:{first} asked for, but only {count} CUDA device(s) exist"
    );
    Ok(devices.min(camp_proto::limits::MAX_GPUS))
}

/// Runs the daemon until a stop signal (passed on to the slots in `slot_pids`) or its limits.
fn run_daemon(cli: Cli, device: tch::Device, devices: u32, slot_pids: Vec<i32>) -> anyhow::Result<()> {
    let name = cli.name.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "worker".into())
    });
    let tls = ClientTls { ca: cli.ca, cert: cli.tls_cert, key: cli.tls_key };
    let config = DaemonConfig {
        coordinator: coordinator_address(cli.coordinator),
        data_dir: cli.data_dir,
        device,
        devices,
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
                let (name, number) = tokio::select! {
                    _ = term.recv() => ("SIGTERM", libc::SIGTERM),
                    _ = usr1.recv() => ("SIGUSR1", libc::SIGUSR1),
                    _ = hup.recv() => ("SIGHUP", libc::SIGHUP),
                    _ = tokio::signal::ctrl_c() => ("SIGINT", libc::SIGINT),
                };
                pass_on(&slot_pids, number);
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
