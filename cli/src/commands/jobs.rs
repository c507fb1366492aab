//! `camp jobs`, `show`, `cancel`, `priority` and `logs`: one job or many, as the coordinator has them.

use camp_proto::v1::{self, CancelJobRequest, GetJobRequest, ListJobsRequest, SetJobPriorityRequest};
use camp_proto::JobResult;
use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::client;
use crate::global_opts::GlobalOpts;
use crate::output::{age, now_ms, number, percent, print_json, Table};
use crate::pages;
use crate::values::LrSchedule;
use camp_proto::text::exact;
use camp_proto::wire;

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state.
    #[arg(long, value_enum)]
    pub state: Option<JobStateArg>,
    /// Only jobs of this stage (e.g. baseline).
    #[arg(long)]
    pub stage: Option<String>,
    /// Only jobs of this owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// At most this many jobs, fetched a page at a time [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "all")]
    pub limit: Option<u32>,
    /// Every job the filters select, however many (paged past the newest 100).
    #[arg(long)]
    pub all: bool,
    /// Only jobs older than this one (a smaller id): the page after a listing that ended at ID.
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
    pub before: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobStateArg {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<JobStateArg> for v1::JobState {
    fn from(state: JobStateArg) -> Self {
        match state {
            JobStateArg::Queued => v1::JobState::Queued,
            JobStateArg::Running => v1::JobState::Running,
            JobStateArg::Succeeded => v1::JobState::Succeeded,
            JobStateArg::Failed => v1::JobState::Failed,
            JobStateArg::Cancelled => v1::JobState::Cancelled,
        }
    }
}

/// `camp jobs` without `--limit`.
pub const DEFAULT_LIMIT: u32 = 100;

pub async fn list(opts: &GlobalOpts, args: &JobsArgs) -> anyhow::Result<()> {
    let filter = ListJobsRequest {
        state: args.state.map_or(v1::JobState::Unspecified, v1::JobState::from) as i32,
        stage: args.stage.clone().unwrap_or_default(),
        owner: args.owner.clone().unwrap_or_default(),
        before_id: args.before.unwrap_or(0),
        ..Default::default()
    };
    let limit = if args.all { usize::MAX } else { args.limit.unwrap_or(DEFAULT_LIMIT) as usize };
    let client = client::connect(opts).await?;
    let jobs = pages::jobs(&client, &filter, limit).await?;
    if opts.json {
        return print_json(&Value::Array(jobs.iter().map(wire::job).collect()));
    }
    print!("{}", jobs_table(&jobs, now_ms()));
    Ok(())
}

fn jobs_table(jobs: &[v1::Job], now_ms: i64) -> Table {
    let mut table = Table::new(&["id", "name", "stage", "arch", "dataset", "state", "attempt", "epoch", "best top-1", "owner", "age"]);
    for job in jobs {
        let spec = job.spec.clone().unwrap_or_default();
        let best = job.result.as_ref().map(|result| percent(result.best_top1)).unwrap_or_default();
        table.push(vec![
            job.id.to_string(),
            job.name.clone(),
            spec.stage,
            spec.arch,
            spec.dataset,
            wire::state_name(job.state).into(),
            format!("{}/{}", job.attempt, job.max_attempts),
            format!("{}/{}", job.epoch, spec.epochs),
            best,
            job.owner.clone(),
            age(job.created_at_ms, now_ms),
        ]);
    }
    table
}

pub async fn show(opts: &GlobalOpts, id: i64) -> anyhow::Result<()> {
    let job = client::connect(opts).await?.get_job(GetJobRequest { id }).await?.into_inner();
    if opts.json {
        return print_json(&wire::job(&job));
    }
    print!("{}", job_details(&job, now_ms()));
    Ok(())
}

/// `key  value` lines for people, the spec indented below.
fn job_details(job: &v1::Job, now_ms: i64) -> String {
    let when = |at_ms: i64| {
        if at_ms > 0 {
            age(at_ms, now_ms)
        } else {
            String::new()
        }
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("id", job.id.to_string()),
        ("name", job.name.clone()),
        ("owner", job.owner.clone()),
        ("state", state_line(job)),
        ("attempt", format!("{}/{} ({} lost to expired leases)", job.attempt, job.max_attempts, job.lease_losses)),
        ("priority", job.priority.to_string()),
        ("worker", job.worker.clone()),
        ("message", job.message.clone()),
        ("created", when(job.created_at_ms)),
        ("started", when(job.started_at_ms)),
        ("finished", when(job.finished_at_ms)),
    ];
    if job.experiment_id > 0 {
        let node = if job.node.is_empty() { String::new() } else { format!(", node {}", job.node) };
        fields.insert(1, ("experiment", format!("{}{node}", job.experiment_id)));
    }
    if !job.parents.is_empty() {
        let parents: Vec<String> = job.parents.iter().map(|p| format!("#{p}")).collect();
        fields.insert(2, ("parents", parents.join(", ")));
    }
    if let Some(result) = &job.result {
        fields.extend(result_fields(result));
    }
    if let Some(spec) = &job.spec {
        fields.insert(4, ("epoch", format!("{}/{}", job.epoch, spec.epochs)));
        let schedule =
            LrSchedule(spec.lr_schedule.iter().map(|step| camp_proto::spec::LrStep { epoch: step.epoch, gamma: step.gamma }).collect());
        fields.extend([
            ("stage", spec.stage.clone()),
            ("arch", spec.arch.clone()),
            ("dataset", spec.dataset.clone()),
            ("lr", exact(spec.lr)),
            ("lr_schedule", schedule.to_string()),
            ("batch_size", spec.batch_size.to_string()),
            ("epochs", spec.epochs.to_string()),
            ("weight_decay", exact(spec.weight_decay)),
            ("momentum", exact(spec.momentum)),
            ("print_freq", spec.print_freq.to_string()),
            ("seed", spec.seed.to_string()),
            ("device", spec.device.clone()),
            ("bf16", spec.bf16.to_string()),
            ("channels_last", spec.channels_last.to_string()),
            ("train_limit", spec.train_limit.to_string()),
            ("test_limit", spec.test_limit.to_string()),
        ]);
        fields.extend(quant_fields(spec));
    }
    if let Some(state) = fields.iter().position(|(key, _)| *key == "state") {
        fields.insert(state + 1, ("waiting", waiting_line(job)));
    }
    let width = fields.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    fields.iter().filter(|(_, value)| !value.is_empty()).map(|(key, value)| format!("{key:<width$}  {value}\n")).collect()
}

/// The spec's quantisation, energy table, REINFORCE knobs and parent, where they apply.
fn quant_fields(spec: &v1::JobSpec) -> Vec<(&'static str, String)> {
    let stage = camp_proto::spec::Stage::parse(&spec.stage).ok();
    let mut fields = Vec::new();
    if let Some(stage) = stage.filter(|&s| s != camp_proto::spec::Stage::Baseline) {
        let bits = |b: Option<u32>| b.unwrap_or(stage.default_bits()).to_string();
        fields.push(("bits", format!("weights {}, activations {}", bits(spec.bits_weights), bits(spec.bits_activations))));
        fields.push(("act_quant", spec.act_quant.clone()));
    }
    if !spec.bits_overrides.is_empty() {
        let bits = |b: Option<u32>| b.map_or("fp".to_owned(), |b| b.to_string());
        let overrides: Vec<String> =
            spec.bits_overrides.iter().map(|o| format!("{}={}/{}", o.pattern, bits(o.wts), bits(o.acts))).collect();
        fields.push(("bits_overrides", overrides.join(" ")));
    }
    if let Some(table) = &spec.energy_table {
        fields.push((
            "energy_table",
            format!(
                "{} (fp32 {} pJ, int8 mult {} pJ, add {} pJ)",
                table.name,
                exact(table.fp32_pj),
                exact(table.int8_mult_pj),
                exact(table.int8_add_pj)
            ),
        ));
    }
    if stage == Some(camp_proto::spec::Stage::Rl) {
        // An unset knob takes the contract's default.
        let defaults = camp_proto::JobSpec::default();
        let or = |v: Option<f64>, d: f64| exact(v.unwrap_or(d));
        fields.push(("alpha", or(spec.alpha, defaults.alpha)));
        fields.push(("gamma", or(spec.gamma, defaults.gamma)));
        fields.push(("rl_weight", or(spec.rl_weight, defaults.rl_weight)));
        let reward = if spec.rl_task_reward.is_empty() { "per_image" } else { spec.rl_task_reward.as_str() };
        fields.push(("rl_task_reward", reward.to_owned()));
    }
    if spec.init_from > 0 {
        fields.push(("init_from", format!("job {}", spec.init_from)));
    }
    fields
}

/// The result as people read it: best and final accuracy, the energy (of the
/// blocks, normalised to 4 bits; stem and head apart; the table), the bits,
/// and for sp/rl the share of images through the 4-bit path.
fn result_fields(result: &JobResult) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("best top-1", format!("{} (epoch {})", percent(result.best_top1), result.best_epoch)),
        ("final top-1", format!("{} (top-5 {})", percent(result.final_top1), percent(result.final_top5))),
        (
            "energy",
            format!(
                "{} of the 4-bit blocks; {} pJ/image in the blocks + {} pJ stem and head (table {})",
                number(result.normalized_energy),
                number(result.energy_pj),
                number(result.stem_head_pj),
                result.energy_table
            ),
        ),
        ("result bits", format!("weights {}, activations {}", result.bits_weights, result.bits_activations)),
    ];
    if let Some(share) = result.fullbit_share {
        fields.push(("4-bit share", format!("{} of test images through the 4-bit path", percent(share))));
    }
    fields
}

/// Why a queued job has not started (GetJob says); "" for any other job.
fn waiting_line(job: &v1::Job) -> String {
    if job.state == v1::JobState::Queued as i32 {
        job.waiting_reason.clone()
    } else {
        String::new()
    }
}

/// `running`, or `running (cancel requested)`.
fn state_line(job: &v1::Job) -> String {
    let state = wire::state_name(job.state);
    if job.cancel_requested && !wire::is_terminal(job.state) {
        format!("{state} (cancel requested)")
    } else {
        state.to_owned()
    }
}

pub async fn cancel(opts: &GlobalOpts, id: i64) -> anyhow::Result<()> {
    let job = client::connect(opts).await?.cancel_job(CancelJobRequest { id }).await?.into_inner();
    if opts.json {
        return print_json(&wire::job(&job));
    }
    println!("job {}: {}", job.id, state_line(&job));
    Ok(())
}

/// `camp priority JOB PRIORITY`: prints the job as `show` does.
pub async fn set_priority(opts: &GlobalOpts, id: i64, priority: i32) -> anyhow::Result<()> {
    let job = client::connect(opts).await?.set_job_priority(SetJobPriorityRequest { id, priority }).await?.into_inner();
    if opts.json {
        return print_json(&wire::job(&job));
    }
    print!("{}", job_details(&job, now_ms()));
    Ok(())
}

pub async fn logs(opts: &GlobalOpts, id: i64) -> anyhow::Result<()> {
    let client = client::connect(opts).await?;
    let lines = pages::logs(&client, id).await?;
    if opts.json {
        return print_json(&Value::Array(lines.iter().map(|line| wire::log_line(id, line)).collect()));
    }
    for line in &lines {
        println!("[attempt {}] {}", line.attempt, line.line);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_job() -> v1::Job {
        v1::Job {
            id: 12,
            name: "tiny".into(),
            owner: "ada".into(),
            spec: Some(camp_proto::JobSpec::default().to_proto()),
            state: v1::JobState::Running as i32,
            attempt: 1,
            max_attempts: 3,
            epoch: 4,
            created_at_ms: 1_000,
            result: Some(JobResult { best_top1: 0.6125, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn jobs_table_has_one_row_per_job() {
        let text = jobs_table(&[sample_job()], 181_000).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID  NAME  STAGE"), "{text}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            ["12", "tiny", "baseline", "preact_resnet20_cifar", "cifar10", "running", "1/3", "4/200", "61.25%", "ada", "3m", "ago"]
        );
    }

    #[test]
    fn details_name_state_and_spec() {
        let job = v1::Job { cancel_requested: true, result: None, ..sample_job() };
        let text = job_details(&job, 181_000);
        assert!(text.contains("running (cancel requested)"), "{text}");
        assert!(text.contains("lr_schedule") && text.contains("80:0.1,120:0.1,160:0.2"), "{text}");
        assert!(!text.contains("finished"), "unset timestamps are left out: {text}");
        assert!(!text.contains("experiment") && !text.contains("bits"), "{text}");
    }

    #[test]
    fn details_say_why_a_queued_job_waits() {
        let queued = v1::Job {
            state: v1::JobState::Queued as i32,
            waiting_reason: "2 queued job(s) come first (higher priority, or older at the same priority)".into(),
            ..sample_job()
        };
        let text = job_details(&queued, 181_000);
        let line = text.lines().find(|l| l.starts_with("waiting ")).unwrap_or_else(|| panic!("no waiting line in {text}"));
        assert!(line.ends_with("2 queued job(s) come first (higher priority, or older at the same priority)"), "{line}");
        let state = text.lines().position(|l| l.starts_with("state ")).unwrap();
        assert!(text.lines().nth(state + 1).unwrap().starts_with("waiting "), "right under the state: {text}");
        let running = v1::Job { waiting_reason: "stale".into(), ..sample_job() };
        assert!(!job_details(&running, 181_000).contains("waiting"), "only queued jobs wait");
    }

    #[test]
    fn details_print_extreme_spec_values_compactly() {
        let mut spec = camp_proto::JobSpec::defaults_for(camp_proto::spec::Stage::Rl).to_proto();
        spec.lr = 1e-300;
        spec.alpha = Some(1e-300);
        let job = v1::Job { spec: Some(spec), ..sample_job() };
        let text = job_details(&job, 181_000);
        let line = |key: &str| text.lines().find(|l| l.starts_with(&format!("{key} "))).unwrap().to_owned();
        assert!(line("lr").ends_with(" 1e-300"), "{text}");
        assert!(line("alpha").ends_with(" 1e-300"), "{text}");
        assert!(text.len() < 4_000, "no 300-digit numbers: {text}");
    }

    #[test]
    fn details_show_energy_and_the_pipeline() {
        let spec = camp_proto::JobSpec { alpha: 0.2, init_from: 13, ..camp_proto::JobSpec::defaults_for(camp_proto::spec::Stage::Rl) };
        let job = v1::Job {
            experiment_id: 3,
            node: "rl-0.2".into(),
            parents: vec![13],
            spec: Some(spec.to_proto()),
            state: v1::JobState::Succeeded as i32,
            result: Some(JobResult {
                best_top1: 0.899,
                best_epoch: 7,
                final_top1: 0.89,
                final_top5: 0.995,
                energy_pj: 1234567.0,
                normalized_energy: 0.41,
                stem_head_pj: 2037862.4,
                energy_table: "horowitz-45nm".into(),
                bits_weights: 1,
                bits_activations: 1,
                fullbit_share: Some(0.29),
                ..Default::default()
            }),
            ..sample_job()
        };
        let text = job_details(&job, 181_000);
        let line =
            |key: &str| text.lines().find(|l| l.starts_with(&format!("{key} "))).unwrap_or_else(|| panic!("no {key} in {text}")).to_owned();
        assert!(line("experiment").ends_with("3, node rl-0.2"), "{text}");
        assert!(line("parents").ends_with("#13"), "{text}");
        assert!(line("best top-1").ends_with("89.90% (epoch 7)"), "{text}");
        assert!(line("final top-1").ends_with("89.00% (top-5 99.50%)"), "{text}");
        let energy = line("energy");
        assert!(energy.contains("0.4100 of the 4-bit blocks") && energy.contains("1234567 pJ/image"), "{energy}");
        assert!(energy.contains("2037862 pJ stem and head") && energy.contains("(table horowitz-45nm)"), "{energy}");
        assert!(line("4-bit share").contains("29.00%"), "{text}");
        assert!(line("result bits").ends_with("weights 1, activations 1"), "{text}");
        assert!(line("bits").ends_with("weights 1, activations 1"), "{text}");
        assert!(line("alpha").ends_with("0.2"), "{text}");
        assert!(line("init_from").ends_with("job 13"), "{text}");
        assert!(line("energy_table").contains("horowitz-45nm (fp32 4.6 pJ"), "{text}");
    }

    #[test]
    fn jobs_limit_is_a_positive_count() {
        match crate::args::tests::parse(&["jobs", "--limit", "2500"]).unwrap().command {
            crate::args::Command::Jobs(args) => assert_eq!(args.limit, Some(2500)),
            other => panic!("parsed as {other:?}"),
        }
        assert_eq!(crate::args::tests::parse(&["jobs", "--limit", "0"]).unwrap_err().exit_code(), 2);
    }
}
