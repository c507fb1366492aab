//! Data-parallel training of one job (`spec.gpus` = N): N processes on one
//! machine, one per device, each training a consecutive shard of every batch
//! ([`RankOf::shard`]); the global batch stays `batch_size`. Each step every
//! rank back-propagates its shard's loss, weighted by its share of the batch,
//! and the ranks sum the optimiser's flat gradient with one all-reduce
//! ([`crate::collective`]), so every rank applies the same update to the same
//! weights. BatchNorm normalises each shard with its own statistics and keeps
//! its own running statistics, as PyTorch's DistributedDataParallel does by
//! default (no SyncBatchNorm); only rank 0's are saved and evaluated.
//!
//! Rank 0 runs where the job was claimed (the daemon, or `camp-worker run`):
//! it alone reports metrics, evaluates and stores checkpoints. It starts ranks
//! 1..N as child processes (`camp-worker rank`, [`Followers`]) that read the
//! spec and the checkpoints to start from in a folder it writes, meet it on a
//! loopback `TCPStore`, and train with an observer that stores nothing
//! ([`FollowerObserver`]). After each step rank 0 broadcasts what its runner
//! asked (continue, interrupt, cancel, abandon), so every rank stops at the
//! same step. A rank that dies makes the others' next collective fail: the
//! attempt fails and is retried from its last checkpoint.
//!
//! Without a process group ([`Ranks::Local`]) one process trains every rank's
//! shard in turn and sums their gradients: the same computation as N ranks
//! (up to the order of the sum), which is what the tests compare against.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use camp_proto::{v1, ValidSpec};
use prost::Message;
use tch::Device;

use crate::collective::Rendezvous;
use crate::error::{EngineError, Result};
use crate::observer::Observer;
use crate::ranks::{FollowerObserver, Ranks};
use crate::stage::{run_stage_ranked, StageInput};

/// How long ranks wait for each other in a collective. Rank 0 evaluates and
/// uploads a checkpoint at each epoch's end while the others wait in the next
/// step's all-reduce, so this bounds how long that may take; a rank that
/// dies fails the others at once (its connections close), not after this.
pub const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The line a follower prints on stdout once it has loaded its spec, data
/// and checkpoints and is about to join the group.
const READY: &str = "camp-rank-ready";
const SPEC_FILE: &str = "spec.pb";
const RESUME_FILE: &str = "resume.safetensors";
const INIT_FILE: &str = "init.safetensors";

/// The device of rank `rank` when rank 0 trains on `device`: the next CUDA
/// devices in order, or the CPU for every rank.
pub fn rank_device(device: Device, rank: i64) -> Device {
    match device {
        Device::Cuda(first) => Device::Cuda(first + rank as usize),
        other => other,
    }
}

fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// CPU threads for each of `world` ranks sharing the threads this process may use.
pub fn threads_per_rank(world: i64) -> i32 {
    (i64::from(tch::get_num_threads()) / world.max(1)).max(1) as i32
}

/// Ranks 1..N of a run, as child processes of rank 0. Dropping it kills
/// those still running.
pub struct Followers {
    children: Vec<(i64, Child)>,
    _dir: tempfile::TempDir,
}

impl Followers {
    /// Starts ranks 1..`spec.gpus` (`camp-worker rank`, this executable) on the
    /// devices after `device`, hands them the spec and the checkpoint bytes to
    /// start from, and waits until each has loaded them. Returns rank 0's
    /// store, to join as rank 0 at once.
    pub fn launch(input: &StageInput, rank_out: Option<&Path>, threads: i32) -> Result<(Rendezvous, Followers)> {
        let StageInput { spec, data_dir, device, resume, init } = *input;
        let world = i64::from(spec.gpus);
        let dir = tempfile::Builder::new()
            .prefix("camp-ranks-")
            .tempdir()
            .map_err(|source| EngineError::Io { path: std::env::temp_dir(), source })?;
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).map_err(|source| EngineError::Io { path, source })
        };
        write(SPEC_FILE, &spec.to_proto().encode_to_vec())?;
        if let Some(bytes) = resume {
            write(RESUME_FILE, bytes)?;
        }
        if let Some(bytes) = init {
            write(INIT_FILE, bytes)?;
        }
        let store = Rendezvous::host(world, COLLECTIVE_TIMEOUT)?;
        let exe = std::env::current_exe().map_err(|source| EngineError::Io { path: "/proc/self/exe".into(), source })?;
        let mut followers = Followers { children: Vec::new(), _dir: dir };
        for rank in 1..world {
            let mut command = Command::new(&exe);
            command
                .arg("--device")
                .arg(device_name(rank_device(device, rank)))
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--threads")
                .arg(threads.to_string())
                .arg("rank")
                .arg("--dir")
                .arg(followers._dir.path())
                .arg("--rank")
                .arg(rank.to_string())
                .arg("--world")
                .arg(world.to_string())
                .arg("--port")
                .arg(store.port().to_string());
            if let Some(out) = rank_out {
                command.arg("--out").arg(out.join(format!("rank-{rank}.safetensors")));
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|source| EngineError::Io { path: exe.clone(), source })?;
            followers.children.push((rank, child));
        }
        for (rank, child) in &mut followers.children {
            let stdout = child.stdout.take().expect("stdout is piped");
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            if line.trim() != READY {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(EngineError::Parallel(format!("rank {rank} of {world} did not start ({status}; its log says why)")));
            }
        }
        Ok((store, followers))
    }

    /// What became of the ranks that have ended (for an attempt's error message).
    pub fn ended(&mut self) -> Vec<String> {
        // A rank that died is why the collective failed; give it a moment to be reaped.
        std::thread::sleep(Duration::from_millis(200));
        self.children
            .iter_mut()
            .filter_map(|(rank, child)| match child.try_wait() {
                Ok(Some(status)) if !status.success() => Some(format!("rank {rank} {status}")),
                _ => None,
            })
            .collect()
    }

    /// Waits for every rank to end; an error names the first that failed.
    pub fn wait(mut self) -> Result<()> {
        let mut failed = Vec::new();
        for (rank, child) in &mut self.children {
            match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => failed.push(format!("rank {rank} {status}")),
                Err(e) => failed.push(format!("rank {rank}: {e}")),
            }
        }
        self.children.clear();
        match failed.is_empty() {
            true => Ok(()),
            false => Err(EngineError::Parallel(failed.join(", "))),
        }
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a follower rank is told on its command line.
pub struct FollowerArgs {
    pub dir: PathBuf,
    pub rank: i64,
    pub world: i64,
    pub port: u16,
    /// Where to write this rank's final state (a checkpoint file), if anywhere.
    pub out: Option<PathBuf>,
}

/// Runs rank `args.rank` (1..N) of a run rank 0 launched: loads what rank 0
/// wrote, says it is ready, joins the group and trains to the end.
pub fn run_follower(args: &FollowerArgs, data_dir: &Path, device: Device) -> Result<()> {
    let read = |name: &str| -> Result<Option<Vec<u8>>> {
        let path = args.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(EngineError::Io { path, source }),
        }
    };
    let spec_bytes = read(SPEC_FILE)?.ok_or_else(|| EngineError::Parallel(format!("{} has no {SPEC_FILE}", args.dir.display())))?;
    let proto = v1::JobSpec::decode(spec_bytes.as_slice()).map_err(|e| EngineError::Parallel(format!("{SPEC_FILE}: {e}")))?;
    let spec = ValidSpec::from_proto(&proto)?;
    if i64::from(spec.gpus) != args.world || !(1..args.world).contains(&args.rank) {
        return Err(EngineError::Parallel(format!("rank {} of {} for a job of {} ranks", args.rank, args.world, spec.gpus)));
    }
    let (resume, init) = (read(RESUME_FILE)?, read(INIT_FILE)?);
    let store = Rendezvous::connect(args.port, args.world, COLLECTIVE_TIMEOUT)?;
    println!("{READY}");
    let group = store.join(args.rank)?;
    let mut observer = FollowerObserver { out: args.out.clone() };
    let input = StageInput { spec: &spec, data_dir, device, resume: resume.as_deref(), init: init.as_deref() };
    run_stage_ranked(&input, &mut observer, Ranks::Group(group))?;
    Ok(())
}

/// Runs a job as rank 0 on `device`: a job of one rank in this process alone;
/// a job of N ranks with ranks 1..N started beside it ([`Followers`]), on the
/// CPU each with its share of the cores. `rank_out`: a folder where each
/// other rank writes its final state as `rank-R.safetensors`.
pub fn run_lead(input: &StageInput, observer: &mut dyn Observer, rank_out: Option<&Path>) -> Result<crate::observer::StageOutcome> {
    let (spec, device) = (input.spec, input.device);
    if spec.gpus == 1 {
        return run_stage_ranked(input, observer, Ranks::Local);
    }
    let world = i64::from(spec.gpus);
    let threads = tch::get_num_threads();
    let per_rank = if device.is_cuda() { threads } else { threads_per_rank(world) };
    tch::set_num_threads(per_rank);
    let mut run = || {
        let (store, mut followers) = Followers::launch(input, rank_out, per_rank)?;
        let group = store.join(0)?;
        match run_stage_ranked(input, observer, Ranks::Group(group)) {
            Ok(outcome) => {
                followers.wait()?;
                Ok(outcome)
            }
            Err(e) => match (followers.ended(), e) {
                (ended, e) if ended.is_empty() => Err(e),
                (ended, EngineError::Parallel(why)) => Err(EngineError::Parallel(format!("{why} ({})", ended.join(", ")))),
                (ended, e) => Err(EngineError::Parallel(format!("{e} ({})", ended.join(", ")))),
            },
        }
    };
    let outcome = run();
    tch::set_num_threads(threads);
    outcome
}
