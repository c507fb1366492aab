//! The rows of issue 12's table, one scenario each, run in order against one
//! coordinator: a burst of submissions, claims from the deep queue it leaves,
//! a fleet heartbeating, idle pollers woken by a trickle of submissions,
//! metric ingest, and submit-to-start latency. Every scenario is bounded in
//! count; each leaves no bench job queued or running behind it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use camp_proto::v1;
use futures::future::try_join_all;
use tokio::sync::mpsc;

use crate::fleet::{job, Connections, FakeWorker};
use crate::procstat::{coordinator_rss_mib, CpuMeter, CpuShare};
use crate::stats::{Database, Latencies};

/// One figure of the table.
pub struct Row {
    pub figure: String,
    pub value: String,
    pub target: &'static str,
    pub cpu: Option<CpuShare>,
}

/// The data set the bench's workers offer and its jobs use.
const DATASET: &str = "cifar100";
const SUBMITTERS: usize = 16;

/// Batch `b` (sequence `b + 1`) of a `loss` series reported `points` at a
/// time: steps `b * points ..`, values falling with the step.
pub fn loss_batch(job_id: i64, attempt: u32, b: usize, points: usize) -> v1::ReportBatch {
    v1::ReportBatch {
        job_id,
        attempt,
        sequence: b as u64 + 1,
        metrics: (0..points)
            .map(|p| v1::Metric {
                name: "loss".into(),
                value: 2.0 / (2 + b * points + p) as f64,
                step: (b * points + p) as i64,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Submits `n` jobs from `SUBMITTERS` concurrent clients; returns each call's latency.
pub async fn submit_burst(conns: &Connections, n: usize) -> anyhow::Result<Latencies> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks = (0..SUBMITTERS).map(|s| {
        let (conns, next) = (conns.clone(), next.clone());
        async move {
            let mut jobs = conns.jobs(s)?;
            let mut lat = Latencies::default();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t = Instant::now();
                jobs.submit_job(job(DATASET)).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }
    });
    Ok(Latencies::merge(try_join_all(tasks).await?))
}

pub async fn register(conns: &Connections, n: usize) -> anyhow::Result<Vec<FakeWorker>> {
    let mut workers = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        workers.extend(try_join_all(chunk.iter().map(|&i| conns.worker(i, DATASET))).await?);
    }
    Ok(workers)
}

/// Rows "submit" and "claims": fills the queue with a burst, then drains it
/// with `claimers` workers, each claim followed at once by `Finish`.
pub async fn submit_and_claims(
    conns: &Connections,
    db: &Database,
    jobs: usize,
    claimers: usize,
    analyze: bool,
) -> anyhow::Result<Vec<Row>> {
    let cpu = CpuMeter::start();
    let t = Instant::now();
    let submits = submit_burst(conns, jobs).await?;
    let submit_secs = t.elapsed().as_secs_f64();
    let submit_cpu = cpu.stop();
    if analyze {
        db.analyze().await?;
    }
    let workers = register(conns, claimers).await?;
    let cpu = CpuMeter::start();
    let t = Instant::now();
    let tasks = workers.into_iter().map(|mut w| async move {
        let (mut lat, mut fin) = (Latencies::default(), Latencies::default());
        loop {
            let (assignment, took) = w.claim(Duration::ZERO).await?;
            let Some(a) = assignment else { break };
            lat.push(took);
            let t = Instant::now();
            w.finish(&a).await?;
            fin.push(t.elapsed());
        }
        anyhow::Ok((lat, fin))
    });
    let (claims, finishes): (Vec<_>, Vec<_>) = try_join_all(tasks).await?.into_iter().unzip();
    let (claims, finishes) = (Latencies::merge(claims), Latencies::merge(finishes));
    let claim_secs = t.elapsed().as_secs_f64();
    let claim_cpu = cpu.stop();
    let stats = if analyze { "fresh statistics" } else { "statistics as the burst left them" };
    Ok(vec![
        Row {
            figure: format!("submit, {SUBMITTERS} concurrent clients ({jobs} jobs)"),
            value: format!("{:.0} jobs/s, p50 {}, p99 {}", jobs as f64 / submit_secs, submits.p(0.5), submits.p(0.99)),
            target: ">= 5,000 jobs/s",
            cpu: Some(submit_cpu),
        },
        Row {
            figure: format!("claims from a queue of {jobs}, {claimers} workers, each claim then Finish ({stats})"),
            value: format!(
                "{:.0} claims/s ({} claimed), p50 {}, p99 {}; Finish p50 {}",
                claims.len() as f64 / claim_secs,
                claims.len(),
                claims.p(0.5),
                claims.p(0.99),
                finishes.p(0.5)
            ),
            target: ">= 5,000 claims/s",
            cpu: Some(claim_cpu),
        },
    ])
}

/// Row "heartbeats": `n` workers each holding one job, heartbeating once a second for `secs`.
pub async fn heartbeats(conns: &Connections, n: usize, secs: u64) -> anyhow::Result<Vec<Row>> {
    submit_burst(conns, n).await?;
    let mut workers = register(conns, n).await?;
    let mut held = Vec::with_capacity(n);
    for chunk in workers.chunks_mut(50) {
        let got = try_join_all(chunk.iter_mut().map(|w| async move { w.claim(Duration::ZERO).await.map(|(a, _)| a) })).await?;
        held.extend(got);
    }
    let holding = held.iter().filter(|a| a.is_some()).count();
    let cpu = CpuMeter::start();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let lost = Arc::new(AtomicUsize::new(0));
    let tasks = workers.iter_mut().zip(&held).enumerate().map(|(i, (w, a))| {
        let lost = lost.clone();
        async move {
            // Spread the fleet over the second, as independent workers are.
            tokio::time::sleep(Duration::from_micros((i as u64 * 1_000_000) / n as u64)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let running: Vec<&v1::Assignment> = a.iter().collect();
            let mut beats = 0usize;
            while Instant::now() < deadline {
                tick.tick().await;
                let reply = w.heartbeat(&running).await?;
                lost.fetch_add(reply.lost.len(), Ordering::Relaxed);
                beats += 1;
            }
            anyhow::Ok(beats)
        }
    });
    let beats: usize = try_join_all(tasks).await?.into_iter().sum();
    let share = cpu.stop();
    for (w, a) in workers.iter_mut().zip(&held) {
        if let Some(a) = a {
            w.finish(a).await?;
        }
    }
    Ok(vec![Row {
        figure: format!("{n} workers heartbeating at 1 Hz for {secs} s ({holding} holding a job)"),
        value: format!(
            "coordinator + database {:.1}% of one core ({beats} heartbeats, {} leases lost)",
            share.coordinator + share.database,
            lost.load(Ordering::Relaxed)
        ),
        target: "< 20% of one core",
        cpu: Some(share),
    }])
}

/// Row "wake-ups": `n` idle workers long-polling while `jobs` jobs arrive, one every `every`.
pub async fn wakeups(conns: &Connections, db: &Database, n: usize, jobs: usize, every: Duration) -> anyhow::Result<Vec<Row>> {
    let workers = register(conns, n).await?;
    let claims = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (claimed_tx, mut claimed_rx) = mpsc::unbounded_channel::<(i64, Instant)>();
    let mut pollers = Vec::with_capacity(n);
    for mut w in workers {
        let (claims, stop, claimed_tx) = (claims.clone(), stop.clone(), claimed_tx.clone());
        pollers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (assignment, _) = w.claim(Duration::from_secs(60)).await?;
                claims.fetch_add(1, Ordering::Relaxed);
                if let Some(a) = assignment {
                    let _ = claimed_tx.send((a.job_id, Instant::now()));
                    w.finish(&a).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    // Every poller is waiting, and the coordinator idle, before the first job arrives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    crate::procstat::settle(Duration::from_secs(30)).await;
    let calls_before = claims.load(Ordering::Relaxed);
    let xacts_before = db.transactions().await?;
    let claim_queries_before = db.claim_queries().await?;
    let cpu = CpuMeter::start();
    let mut submitter = conns.jobs(0)?;
    let mut submitted = std::collections::HashMap::new();
    let mut latency = Latencies::default();
    for _ in 0..jobs {
        let t = Instant::now();
        let job = submitter.submit_job(job(DATASET)).await?.into_inner();
        submitted.insert(job.id, t);
        tokio::time::sleep(every).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while latency.len() < jobs {
        match tokio::time::timeout_at(deadline.into(), claimed_rx.recv()).await {
            Ok(Some((id, at))) => {
                if let Some(t) = submitted.get(&id) {
                    latency.push(at.duration_since(*t));
                }
            }
            _ => break,
        }
    }
    let share = cpu.stop();
    let xacts = db.transactions().await?.zip(xacts_before).map(|(a, b)| a - b);
    let claim_queries = db.claim_queries().await?.zip(claim_queries_before).map(|(a, b)| a - b);
    let calls = claims.load(Ordering::Relaxed) - calls_before;
    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        p.abort();
    }
    let per_job = |x: i64| format!("{:.1}", x as f64 / jobs as f64);
    Ok(vec![Row {
        figure: format!("{n} idle long-polling workers, {jobs} submissions, one every {} ms", every.as_millis()),
        value: format!(
            "{calls} claim calls answered for {} jobs claimed; database transactions per job: {}; store claim queries per job: {}; submit -> claimed p50 {}",
            latency.len(),
            xacts.map_or("n/a (no --database-url)".into(), per_job),
            claim_queries.map_or("n/a (needs --metrics-url)".into(), per_job),
            latency.p(0.5),
        ),
        target: "<= 2 claim attempts per job",
        cpu: Some(share),
    }])
}

/// Row "ingest": `streams` jobs each reporting `batches` batches of `points` points in one stream.
pub async fn ingest(conns: &Connections, streams: usize, batches: usize, points: usize) -> anyhow::Result<Vec<Row>> {
    submit_burst(conns, streams).await?;
    let mut workers = register(conns, streams).await?;
    let mut held = Vec::new();
    for w in workers.iter_mut() {
        held.push(w.claim(Duration::ZERO).await?.0.ok_or_else(|| anyhow::anyhow!("ingest: no job to claim"))?);
    }
    let cpu = CpuMeter::start();
    let t = Instant::now();
    let tasks = workers.iter_mut().zip(&held).map(|(w, a)| async move {
        let (job_id, attempt) = (a.job_id, a.attempt);
        let stream = futures::stream::iter((0..batches).map(move |b| loss_batch(job_id, attempt, b, points)));
        let reply = w.client.report(stream).await?.into_inner();
        anyhow::Ok(reply.stored as usize)
    });
    let stored: usize = try_join_all(tasks).await?.into_iter().sum();
    let secs = t.elapsed().as_secs_f64();
    let share = cpu.stop();
    for (w, a) in workers.iter_mut().zip(&held) {
        w.finish(a).await?;
    }
    let total = streams * batches * points;
    Ok(vec![Row {
        figure: format!("metric ingest, {streams} streams of {batches} batches of {points} points"),
        value: format!("{:.0} points/s ({} of {} batches stored)", total as f64 / secs, stored, streams * batches),
        target: if points >= 1000 { ">= 300k points/s" } else { ">= 150k points/s" },
        cpu: Some(share),
    }])
}

/// Row "submit -> start": one idle worker long-polls; each of `n` submissions is timed until it is claimed.
pub async fn submit_to_start(conns: &Connections, n: usize) -> anyhow::Result<Vec<Row>> {
    let mut w = conns.worker(0, DATASET).await?;
    let mut jobs = conns.jobs(1)?;
    let mut latency = Latencies::default();
    for _ in 0..n {
        let claim = async {
            loop {
                if let (Some(a), _) = w.claim(Duration::from_secs(10)).await? {
                    return anyhow::Ok((a, Instant::now()));
                }
            }
        };
        let submit = async {
            // Let the claim reach the coordinator and wait first.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t = Instant::now();
            jobs.submit_job(job(DATASET)).await?;
            anyhow::Ok(t)
        };
        let ((a, claimed_at), submitted_at) = tokio::try_join!(claim, submit)?;
        latency.push(claimed_at.duration_since(submitted_at));
        w.finish(&a).await?;
    }
    Ok(vec![Row {
        figure: format!("submit -> start with an idle worker ({n} jobs)"),
        value: format!("p50 {}, p99 {}; coordinator RSS {:.0} MiB", latency.p(0.5), latency.p(0.99), coordinator_rss_mib()),
        target: "<= 5 ms p50",
        cpu: None,
    }])
}
