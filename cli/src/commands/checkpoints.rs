//! `camp checkpoints` and `camp checkpoint download`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use camp_proto::v1::{self, DownloadCheckpointRequest, ListCheckpointsRequest};
use clap::{ArgGroup, Args, Subcommand};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::Status;

use crate::client;
use crate::global_opts::GlobalOpts;
use crate::output::{age, now_ms, percent, print_json, size, Table};
use camp_proto::wire;

#[derive(Debug, Subcommand)]
pub enum CheckpointAction {
    /// Download a job's checkpoint (the latest unless told otherwise), verifying size and sha256.
    #[command(group(ArgGroup::new("which").args(["best", "latest", "checkpoint"])))]
    Download(DownloadArgs),
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The job id.
    pub id: i64,
    /// File to write (via FILE.tmp, renamed once verified).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// The checkpoint with the best top-1.
    #[arg(long)]
    pub best: bool,
    /// The most recent checkpoint (the default).
    #[arg(long)]
    pub latest: bool,
    /// This checkpoint id.
    #[arg(long, value_name = "CKPT_ID")]
    pub checkpoint: Option<i64>,
}

pub async fn list(opts: &GlobalOpts, job_id: i64) -> anyhow::Result<()> {
    let checkpoints = client::connect(opts).await?.list_checkpoints(ListCheckpointsRequest { job_id }).await?.into_inner().checkpoints;
    if opts.json {
        return print_json(&Value::Array(checkpoints.iter().map(wire::checkpoint).collect()));
    }
    print!("{}", table(&checkpoints, now_ms()));
    Ok(())
}

fn table(checkpoints: &[v1::Checkpoint], now_ms: i64) -> Table {
    let mut table = Table::new(&["id", "epoch", "step", "top-1", "best", "size", "sha256", "created"]);
    for checkpoint in checkpoints {
        table.push(vec![
            checkpoint.id.to_string(),
            checkpoint.epoch.to_string(),
            checkpoint.step.to_string(),
            percent(checkpoint.top1),
            if checkpoint.best { "*" } else { "" }.into(),
            size(checkpoint.size),
            checkpoint.sha256.chars().take(12).collect(),
            age(checkpoint.created_at_ms, now_ms),
        ]);
    }
    table
}

/// Always names the job: with `--checkpoint N` the coordinator checks that N
/// is that job's (INVALID_ARGUMENT, exit 2, when it is another job's).
fn download_request(args: &DownloadArgs) -> DownloadCheckpointRequest {
    DownloadCheckpointRequest {
        checkpoint_id: args.checkpoint.unwrap_or(0),
        job_id: args.id,
        which: if args.best { "best" } else { "latest" }.into(),
    }
}

pub async fn download(opts: &GlobalOpts, args: &DownloadArgs) -> anyhow::Result<()> {
    let request = download_request(args);
    let chunks = client::connect(opts).await?.download_checkpoint(request).await?.into_inner();
    let info = write_verified(chunks, &args.output).await?;
    if opts.json {
        let path = args.output.display().to_string();
        return print_json(&json!({
            "path": path,
            "size": info.size,
            "sha256": info.sha256,
            "checkpoint": wire::checkpoint(&info),
        }));
    }
    println!(
        "{}: checkpoint {} of job {} (epoch {}), {} bytes, sha256 {}",
        args.output.display(),
        info.id,
        info.job_id,
        info.epoch,
        info.size,
        info.sha256
    );
    Ok(())
}

/// `FILE.tmp` beside `FILE`.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes the chunks to `path.tmp`, checks size and sha256 against the first
/// chunk's `info`, then renames it to `path`; on any failure the temp file is removed.
async fn write_verified<S>(chunks: S, path: &Path) -> anyhow::Result<v1::Checkpoint>
where
    S: Stream<Item = Result<v1::CheckpointChunk, Status>> + Unpin,
{
    let temp = temp_path(path);
    match write_and_check(chunks, &temp).await {
        Ok(info) => {
            tokio::fs::rename(&temp, path).await.with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))?;
            Ok(info)
        }
        Err(err) => {
            // Best effort: the temp file may not exist yet.
            let _ = tokio::fs::remove_file(&temp).await;
            Err(err)
        }
    }
}

async fn write_and_check<S>(mut chunks: S, temp: &Path) -> anyhow::Result<v1::Checkpoint>
where
    S: Stream<Item = Result<v1::CheckpointChunk, Status>> + Unpin,
{
    let first = chunks.next().await.ok_or_else(|| anyhow!("the coordinator sent no checkpoint"))??;
    let info = first.info.ok_or_else(|| anyhow!("the coordinator's first chunk carried no checkpoint info"))?;
    let mut file = tokio::fs::File::create(temp).await.with_context(|| format!("cannot create {}", temp.display()))?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    let mut data = first.data;
    loop {
        hasher.update(&data);
        written += data.len() as u64;
        file.write_all(&data).await.with_context(|| format!("cannot write {}", temp.display()))?;
        match chunks.next().await {
            Some(chunk) => data = chunk?.data,
            None => break,
        }
    }
    file.sync_all().await.with_context(|| format!("cannot write {}", temp.display()))?;
    if written != info.size {
        bail!("checkpoint {} is {} bytes, but {written} arrived; download discarded", info.id, info.size);
    }
    let sha256 = format!("{:x}", hasher.finalize());
    if !sha256.eq_ignore_ascii_case(&info.sha256) {
        bail!("checkpoint {} has sha256 {}, but the bytes that arrived hash to {sha256}; download discarded", info.id, info.sha256);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &[u8] = b"safetensors bytes";
    const WRONG_SHA256: &str = "1b5d1bc2a6a8a2e1d4ab3e5a6a20b1b1e9ef86a0e1f0c0b5e3c5e2b1f7c0d9e1";

    fn chunks(info: v1::Checkpoint, parts: &[&[u8]]) -> impl Stream<Item = Result<v1::CheckpointChunk, Status>> + Unpin {
        let mut messages: Vec<Result<v1::CheckpointChunk, Status>> =
            parts.iter().map(|part| Ok(v1::CheckpointChunk { info: None, data: part.to_vec() })).collect();
        messages.insert(0, Ok(v1::CheckpointChunk { info: Some(info), data: Vec::new() }));
        futures::stream::iter(messages)
    }

    fn info_for(data: &[u8]) -> v1::Checkpoint {
        v1::Checkpoint { id: 5, job_id: 1, sha256: format!("{:x}", Sha256::digest(data)), size: data.len() as u64, ..Default::default() }
    }

    #[tokio::test]
    async fn verified_download_lands_at_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let info = write_verified(chunks(info_for(DATA), &[&DATA[..5], &DATA[5..]]), &path).await.unwrap();
        assert_eq!(info.id, 5);
        assert_eq!(std::fs::read(&path).unwrap(), DATA);
        assert!(!temp_path(&path).exists());
    }

    #[tokio::test]
    async fn mismatch_removes_the_temp_file_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let wrong_hash = v1::Checkpoint { sha256: WRONG_SHA256.into(), ..info_for(DATA) };
        let err = write_verified(chunks(wrong_hash, &[DATA]), &path).await.unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        let short = write_verified(chunks(info_for(DATA), &[&DATA[..3]]), &path).await.unwrap_err();
        assert!(short.to_string().contains("bytes"), "{short}");
        assert!(!path.exists() && !temp_path(&path).exists());
    }

    #[tokio::test]
    async fn stream_errors_remove_the_temp_file_and_keep_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let failing = futures::stream::iter(vec![
            Ok(v1::CheckpointChunk { info: Some(info_for(DATA)), data: DATA[..4].to_vec() }),
            Err(Status::unavailable("coordinator went away")),
        ]);
        let err = write_verified(failing, &path).await.unwrap_err();
        assert_eq!(crate::exit::code_for_error(&err), crate::exit::UNREACHABLE);
        assert!(!temp_path(&path).exists());
        let no_info = futures::stream::iter(vec![Ok(v1::CheckpointChunk { info: None, data: DATA.to_vec() })]);
        assert!(write_verified(no_info, &path).await.is_err());
    }

    fn download_args(line: &[&str]) -> DownloadArgs {
        use clap::Parser;
        let cli = crate::args::Cli::try_parse_from(["camp", "checkpoint", "download"].iter().chain(line)).unwrap();
        match cli.command {
            crate::args::Command::Checkpoint { action: CheckpointAction::Download(args) } => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn a_checkpoint_id_is_sent_with_its_job() {
        let request = download_request(&download_args(&["3", "-o", "f", "--checkpoint", "9"]));
        assert_eq!((request.checkpoint_id, request.job_id), (9, 3));
        let request = download_request(&download_args(&["3", "-o", "f", "--best"]));
        assert_eq!((request.checkpoint_id, request.job_id, request.which.as_str()), (0, 3, "best"));
        let request = download_request(&download_args(&["3", "-o", "f"]));
        assert_eq!(request.which, "latest");
    }

    #[test]
    fn a_checkpoint_of_another_job_is_refused_with_exit_2() {
        let refusal = Status::invalid_argument("checkpoint_id: checkpoint 9 is not a checkpoint of job 3");
        let err = anyhow::Error::new(refusal);
        assert_eq!(crate::exit::code_for_error(&err), crate::exit::USAGE);
        assert_eq!(crate::exit::one_line_message(&err), "checkpoint_id: checkpoint 9 is not a checkpoint of job 3");
    }

    #[test]
    fn table_shortens_sha256_and_marks_best() {
        let checkpoint = v1::Checkpoint { id: 2, epoch: 3, step: 1170, top1: 0.485, best: true, size: 2048, ..info_for(DATA) };
        let text = table(&[checkpoint], 0).to_string();
        let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(cells[..7], ["2", "3", "1170", "48.50%", "*", "2.0", "KiB"]);
        assert_eq!(cells[7].len(), 12);
    }

    #[test]
    fn download_takes_one_selector() {
        assert!(crate::args::tests::parse(&["checkpoint", "download", "3", "-o", "f", "--best", "--latest"]).is_err());
        assert!(crate::args::tests::parse(&["checkpoint", "download", "3", "--best"]).is_err());
        let cli = crate::args::tests::parse(&["checkpoint", "download", "3", "-o", "f", "--checkpoint", "9"]).unwrap();
        match cli.command {
            crate::args::Command::Checkpoint { action: CheckpointAction::Download(args) } => {
                assert_eq!((args.id, args.checkpoint, args.best), (3, Some(9), false))
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
