//! `camp jobs`, `show`, `cancel` and `logs`: one job or many, as the coordinator has them.

use camp_proto::v1::{self, CancelJobRequest, GetJobRequest, GetLogsRequest, ListJobsRequest};
use serde_json::Value;

use crate::args::{GlobalOpts, JobsArgs, LrSchedule};
use crate::client;
use crate::output::{age, now_ms, percent, print_json, Table};
use crate::wire;

pub async fn list(opts: &GlobalOpts, args: &JobsArgs) -> anyhow::Result<()> {
    let request = ListJobsRequest {
        state: args
            .state
            .map_or(v1::JobState::Unspecified, v1::JobState::from) as i32,
        stage: args.stage.clone().unwrap_or_default(),
        owner: args.owner.clone().unwrap_or_default(),
        limit: args.limit.unwrap_or(0),
    };
    let jobs = client::connect(opts)
        .await?
        .list_jobs(request)
        .await?
        .into_inner()
        .jobs;
    if opts.json {
        return print_json(&Value::Array(jobs.iter().map(wire::job).collect()));
    }
    print!("{}", jobs_table(&jobs, now_ms()));
    Ok(())
}

fn jobs_table(jobs: &[v1::Job], now_ms: i64) -> Table {
    let mut table = Table::new(&[
        "id",
        "name",
        "stage",
        "arch",
        "dataset",
        "state",
        "attempt",
        "epoch",
        "best top-1",
        "owner",
        "age",
    ]);
    for job in jobs {
        let spec = job.spec.clone().unwrap_or_default();
        let best = wire::best_top1(&wire::embedded_json(&job.result_json))
            .map(percent)
            .unwrap_or_default();
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
    let job = client::connect(opts)
        .await?
        .get_job(GetJobRequest { id })
        .await?
        .into_inner();
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
        (
            "attempt",
            format!(
                "{}/{} ({} lost to expired leases)",
                job.attempt, job.max_attempts, job.lease_losses
            ),
        ),
        ("priority", job.priority.to_string()),
        ("worker", job.worker.clone()),
        ("message", job.message.clone()),
        ("created", when(job.created_at_ms)),
        ("started", when(job.started_at_ms)),
        ("finished", when(job.finished_at_ms)),
        ("result", job.result_json.clone()),
    ];
    if let Some(spec) = &job.spec {
        fields.insert(4, ("epoch", format!("{}/{}", job.epoch, spec.epochs)));
        let schedule = LrSchedule(
            spec.lr_schedule
                .iter()
                .map(|step| camp_proto::spec::LrStep {
                    epoch: step.epoch,
                    gamma: step.gamma,
                })
                .collect(),
        );
        fields.extend([
            ("stage", spec.stage.clone()),
            ("arch", spec.arch.clone()),
            ("dataset", spec.dataset.clone()),
            ("lr", spec.lr.to_string()),
            ("lr_schedule", schedule.to_string()),
            ("batch_size", spec.batch_size.to_string()),
            ("epochs", spec.epochs.to_string()),
            ("weight_decay", spec.weight_decay.to_string()),
            ("momentum", spec.momentum.to_string()),
            ("print_freq", spec.print_freq.to_string()),
            ("seed", spec.seed.to_string()),
            ("device", spec.device.clone()),
            ("bf16", spec.bf16.to_string()),
            ("channels_last", spec.channels_last.to_string()),
            ("train_limit", spec.train_limit.to_string()),
            ("test_limit", spec.test_limit.to_string()),
        ]);
    }
    let width = fields.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    fields
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| format!("{key:<width$}  {value}\n"))
        .collect()
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
    let job = client::connect(opts)
        .await?
        .cancel_job(CancelJobRequest { id })
        .await?
        .into_inner();
    if opts.json {
        return print_json(&wire::job(&job));
    }
    println!("job {}: {}", job.id, state_line(&job));
    Ok(())
}

pub async fn logs(opts: &GlobalOpts, id: i64) -> anyhow::Result<()> {
    let lines = client::connect(opts)
        .await?
        .get_logs(GetLogsRequest { job_id: id })
        .await?
        .into_inner()
        .lines;
    if opts.json {
        return print_json(&Value::Array(
            lines.iter().map(|line| wire::log_line(id, line)).collect(),
        ));
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
            result_json: r#"{"best_top1": 0.6125}"#.into(),
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
            [
                "12",
                "tiny",
                "baseline",
                "preact_resnet20_cifar",
                "cifar10",
                "running",
                "1/3",
                "4/200",
                "61.25%",
                "ada",
                "3m",
                "ago"
            ]
        );
    }

    #[test]
    fn details_name_state_and_spec() {
        let job = v1::Job {
            cancel_requested: true,
            ..sample_job()
        };
        let text = job_details(&job, 181_000);
        assert!(text.contains("running (cancel requested)"), "{text}");
        assert!(
            text.contains("lr_schedule") && text.contains("80:0.1,120:0.1,160:0.2"),
            "{text}"
        );
        assert!(
            !text.contains("finished"),
            "unset timestamps are left out: {text}"
        );
    }
}
