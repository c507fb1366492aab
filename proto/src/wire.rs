//! The JSON shapes of the wire types: what `camp --json` prints and the
//! coordinator's dashboard API answers (one shape for both), and the names
//! people read for states.

use serde_json::{json, Value};

use crate::text::json_f64;
use crate::v1;

/// Lowercase state name: queued, running, succeeded, failed, cancelled.
pub fn state_name(state: i32) -> &'static str {
    match v1::JobState::try_from(state) {
        Ok(v1::JobState::Queued) => "queued",
        Ok(v1::JobState::Running) => "running",
        Ok(v1::JobState::Succeeded) => "succeeded",
        Ok(v1::JobState::Failed) => "failed",
        Ok(v1::JobState::Cancelled) => "cancelled",
        Ok(v1::JobState::Unspecified) | Err(_) => "unspecified",
    }
}

pub fn is_terminal(state: i32) -> bool {
    matches!(v1::JobState::try_from(state), Ok(v1::JobState::Succeeded | v1::JobState::Failed | v1::JobState::Cancelled))
}

/// A checkpoint's metadata (an opaque JSON object of strings, shown as it is):
/// parsed, `null` when empty, kept as a string when it does not parse.
pub fn embedded_json(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// The spec as the contract reads it (`crate::JobSpec`: every field, the
/// stage's defaults where the wire left a knob unset), so a field added to the
/// contract is shown without a line here. A spec the contract refuses (a newer
/// or broken coordinator) is shown as the reason, not half.
pub fn spec(spec: &v1::JobSpec) -> Value {
    match crate::ValidSpec::from_proto(spec) {
        Ok(spec) => serde_json::to_value(&spec).unwrap_or(Value::Null),
        Err(err) => json!({ "invalid": err.to_string() }),
    }
}

pub fn job(job: &v1::Job) -> Value {
    json!({
        "id": job.id,
        "name": job.name,
        "owner": job.owner,
        "stage": job.spec.as_ref().map_or("", |spec| spec.stage.as_str()),
        "state": state_name(job.state),
        "priority": job.priority,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "lease_losses": job.lease_losses,
        "cancel_requested": job.cancel_requested,
        "worker": job.worker,
        "message": job.message,
        "epoch": job.epoch,
        "spec": job.spec.as_ref().map_or(Value::Null, spec),
        "result": job.result.as_ref().map_or(Value::Null, |result| serde_json::to_value(result).unwrap_or(Value::Null)),
        "created_at_ms": job.created_at_ms,
        "started_at_ms": job.started_at_ms,
        "finished_at_ms": job.finished_at_ms,
        "experiment_id": job.experiment_id,
        "node": job.node,
        "parents": job.parents,
        "waiting_reason": job.waiting_reason,
    })
}

/// An experiment with its jobs (`jobs` is empty in a listing).
pub fn experiment(experiment: &v1::Experiment) -> Value {
    json!({
        "id": experiment.id,
        "name": experiment.name,
        "owner": experiment.owner,
        "created_at_ms": experiment.created_at_ms,
        "jobs": experiment.jobs.iter().map(job).collect::<Vec<_>>(),
    })
}

pub fn metric(job_id: i64, metric: &v1::Metric) -> Value {
    json!({
        "job_id": job_id,
        "attempt": metric.attempt,
        "epoch": metric.epoch,
        "step": metric.step,
        "name": metric.name,
        "value": json_f64(metric.value),
        "at_ms": metric.at_ms,
    })
}

pub fn log_line(job_id: i64, line: &v1::LogLine) -> Value {
    json!({ "job_id": job_id, "attempt": line.attempt, "at_ms": line.at_ms, "line": line.line })
}

pub fn checkpoint(checkpoint: &v1::Checkpoint) -> Value {
    json!({
        "id": checkpoint.id,
        "job_id": checkpoint.job_id,
        "attempt": checkpoint.attempt,
        "epoch": checkpoint.epoch,
        "step": checkpoint.step,
        "sha256": checkpoint.sha256,
        "size": checkpoint.size,
        "top1": json_f64(checkpoint.top1),
        "best": checkpoint.best,
        "metadata": embedded_json(&checkpoint.metadata_json),
        "created_at_ms": checkpoint.created_at_ms,
    })
}

/// A worker's state as `camp workers` shows it. A coordinator that does not
/// say (one older than the field) is read from `alive` and the running jobs.
pub fn worker_state_name(worker: &v1::Worker) -> &'static str {
    match v1::WorkerState::try_from(worker.state) {
        Ok(v1::WorkerState::Idle) => "idle",
        Ok(v1::WorkerState::Busy) => "busy",
        Ok(v1::WorkerState::Silent) => "silent",
        Ok(v1::WorkerState::Unspecified) | Err(_) if !worker.alive => "silent",
        Ok(v1::WorkerState::Unspecified) | Err(_) if worker.running_jobs.is_empty() => "idle",
        Ok(v1::WorkerState::Unspecified) | Err(_) => "busy",
    }
}

/// How long ago a worker's last heartbeat was: the coordinator's figure, or
/// (from a coordinator that does not give it) the heartbeat's time against `now_ms`.
pub fn heartbeat_age_ms(worker: &v1::Worker, now_ms: i64) -> i64 {
    if worker.heartbeat_age_ms > 0 || worker.state != v1::WorkerState::Unspecified as i32 {
        worker.heartbeat_age_ms
    } else {
        (now_ms - worker.last_heartbeat_ms).max(0)
    }
}

/// A worker; `now_ms` dates its last heartbeat when the coordinator did not give its age.
pub fn worker(worker: &v1::Worker, now_ms: i64) -> Value {
    json!({
        "id": worker.id,
        "name": worker.name,
        "hostname": worker.hostname,
        "device_kind": worker.device_kind,
        "gpus": worker.gpus,
        "devices": worker.devices.max(1),
        "datasets": worker.datasets,
        "labels": worker.labels,
        "alive": worker.alive,
        "state": worker_state_name(worker),
        "last_heartbeat_ms": worker.last_heartbeat_ms,
        "heartbeat_age_ms": heartbeat_age_ms(worker, now_ms),
        "running_jobs": worker.running_jobs,
    })
}

fn bits_number(bits: Option<u32>) -> u32 {
    bits.unwrap_or(32)
}

/// A network's energy (`camp energy --json`, the dashboard's job page): totals,
/// the table, every layer and, for dual path, the per-block 4-bit paths.
pub fn energy_report(spec: &crate::JobSpec, report: &crate::energy::EnergyReport) -> Value {
    let blocks_pj = report.all_blocks_pj();
    let layers: Vec<Value> = report
        .layers
        .iter()
        .map(|layer| {
            json!({
                "path": layer.path,
                "role": layer.role,
                "macs": layer.macs,
                "bits": bits_number(layer.bits),
                "energy_pj": json_f64(layer.energy_pj),
            })
        })
        .collect();
    let mut value = json!({
        "arch": report.arch,
        "dataset": spec.dataset,
        "stage": spec.stage.as_str(),
        "bits_weights": spec.weight_bits(),
        "bits_activations": spec.activation_bits(),
        "macs": report.macs,
        "energy_pj": json_f64(blocks_pj),
        "normalized_energy": json_f64(report.normalized(blocks_pj)),
        "stem_head_pj": json_f64(report.stem_head_pj),
        "reference_4bit_pj": json_f64(report.reference_4bit_pj),
        "table": {
            "name": spec.energy_table.name,
            "fp32_pj": json_f64(spec.energy_table.fp32_pj),
            "int8_mult_pj": json_f64(spec.energy_table.int8_mult_pj),
            "int8_add_pj": json_f64(spec.energy_table.int8_add_pj),
        },
        "layers": layers,
    });
    if spec.stage.is_dual_path() {
        let all_off = report.blocks_pj(&vec![0.0; report.fullbit_pj.len()]);
        value["fullbit_pj"] = report.fullbit_pj.iter().copied().map(json_f64).collect();
        value["energy_pj_all_off"] = json_f64(all_off);
        value["normalized_energy_all_off"] = json_f64(report.normalized(all_off));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_json_has_the_documented_keys() {
        let running = v1::Job {
            id: 12,
            state: v1::JobState::Running as i32,
            spec: Some(crate::JobSpec::default().to_proto()),
            result: Some(v1::JobResult { best_top1: 0.915, best_epoch: 180, ..Default::default() }),
            attempt: 1,
            max_attempts: 3,
            ..Default::default()
        };
        let value = job(&running);
        assert_eq!(value["id"], 12);
        assert_eq!(value["state"], "running");
        assert_eq!(value["stage"], "baseline");
        assert_eq!((value["attempt"].as_u64(), value["max_attempts"].as_u64()), (Some(1), Some(3)));
        assert_eq!(value["spec"]["arch"], "preact_resnet20_cifar");
        assert_eq!(value["spec"]["lr_schedule"][0], json!({ "epoch": 80, "gamma": 0.1 }));
        assert_eq!((value["result"]["best_top1"].as_f64(), value["result"]["best_epoch"].as_u64()), (Some(0.915), Some(180)));
        assert_eq!(value["result"]["images_per_s"], Value::Null, "an unset figure is null");
        for key in ["message", "worker", "created_at_ms", "started_at_ms", "finished_at_ms"] {
            assert!(value.get(key).is_some(), "{key}");
        }
        let unfinished = super::job(&v1::Job { id: 1, ..Default::default() });
        assert_eq!((unfinished["result"].clone(), unfinished["spec"].clone()), (Value::Null, Value::Null));
    }

    #[test]
    fn embedded_json_is_parsed_or_kept() {
        assert_eq!(embedded_json(""), Value::Null);
        assert_eq!(embedded_json(r#"{"a":1}"#), json!({ "a": 1 }));
        assert_eq!(embedded_json("not json"), json!("not json"));
    }

    #[test]
    fn metric_and_checkpoint_rows() {
        let row = metric(4, &v1::Metric { name: "test_top1".into(), value: 55.5, step: 390, epoch: 1, attempt: 2, at_ms: 9, id: 0 });
        assert_eq!(row, json!({ "job_id": 4, "attempt": 2, "epoch": 1, "step": 390, "name": "test_top1", "value": 55.5, "at_ms": 9 }));
        let row = checkpoint(&v1::Checkpoint { id: 3, top1: f64::NAN, metadata_json: r#"{"arch":"x"}"#.into(), ..Default::default() });
        assert_eq!(row["top1"], "NaN", "not evaluated: NaN survives as a string");
        assert_eq!(row["metadata"]["arch"], "x");
    }

    #[test]
    fn json_keeps_nan_and_infinities_as_strings() {
        let row = metric(4, &v1::Metric { name: "loss".into(), value: f64::NAN, ..Default::default() });
        assert_eq!(row["value"], "NaN");
        let inf = |value| metric(4, &v1::Metric { value, ..Default::default() })["value"].clone();
        assert_eq!((inf(f64::INFINITY), inf(f64::NEG_INFINITY)), (json!("inf"), json!("-inf")));
        assert_eq!(inf(1e308).to_string(), "1e+308");
        let broken = super::spec(&v1::JobSpec { lr: f64::INFINITY, ..crate::JobSpec::default().to_proto() });
        assert!(broken["invalid"].as_str().unwrap().contains("lr: must be"), "{broken}");
    }

    /// A new field of the wire spec fails this test (the literal below stops
    /// compiling) until it is named here and `camp show --json` shows it.
    #[test]
    fn show_json_carries_every_field_of_the_wire_spec() {
        let wire = v1::JobSpec {
            stage: "rl".into(),
            arch: "preact_resnet32_cifar".into(),
            dataset: "fashion-mnist".into(),
            lr: 0.05,
            batch_size: 64,
            epochs: 7,
            weight_decay: 1e-4,
            momentum: 0.8,
            print_freq: 20,
            seed: 3,
            device: "cuda".into(),
            lr_schedule: vec![v1::LrStep { epoch: 5, gamma: 0.1 }],
            bf16: true,
            channels_last: true,
            train_limit: 1000,
            test_limit: 500,
            bits_weights: Some(2),
            bits_activations: Some(2),
            act_quant: "pact".into(),
            bits_overrides: vec![v1::BitsOverride { pattern: "fc".into(), wts: None, acts: None }],
            default_overrides: Some(false),
            energy_table: Some(v1::EnergyTable { name: "t".into(), fp32_pj: 4.0, int8_mult_pj: 0.2, int8_add_pj: 0.03 }),
            alpha: Some(0.3),
            gamma: Some(0.9),
            rl_weight: Some(0.5),
            rl_task_reward: "batch_mean".into(),
            init_from: 9,
            pact_weight_decay: Some(0.001),
            require_labels: [("gpu".to_string(), "h100".to_string())].into_iter().collect(),
            gpus: 1,
            cuda_graph: true,
        };
        let names = [
            "stage",
            "arch",
            "dataset",
            "lr",
            "batch_size",
            "epochs",
            "weight_decay",
            "momentum",
            "print_freq",
            "seed",
            "device",
            "lr_schedule",
            "bf16",
            "channels_last",
            "train_limit",
            "test_limit",
            "bits_weights",
            "bits_activations",
            "act_quant",
            "bits_overrides",
            "default_overrides",
            "energy_table",
            "alpha",
            "gamma",
            "rl_weight",
            "rl_task_reward",
            "init_from",
            "pact_weight_decay",
            "require_labels",
            "gpus",
            "cuda_graph",
        ];
        let shown = spec(&wire);
        let keys: Vec<&str> = shown.as_object().unwrap_or_else(|| panic!("{shown}")).keys().map(String::as_str).collect();
        for name in names {
            assert!(keys.contains(&name), "camp show --json leaves out spec.{name}: {shown}");
        }
        assert_eq!(keys.len(), names.len(), "{keys:?}");
        assert_eq!(
            (&shown["pact_weight_decay"], &shown["rl_task_reward"], &shown["alpha"]),
            (&json!(0.001), &json!("batch_mean"), &json!(0.3))
        );
        let unset = spec(&crate::JobSpec::defaults_for(crate::spec::Stage::Rl).to_proto());
        assert_eq!(unset["rl_weight"], json!(crate::JobSpec::defaults_for(crate::spec::Stage::Rl).rl_weight));
    }

    #[test]
    fn job_json_says_why_a_queued_job_waits() {
        let queued = job(&v1::Job {
            id: 3,
            state: v1::JobState::Queued as i32,
            waiting_reason: "no live worker offers data set cifar10".into(),
            ..Default::default()
        });
        assert_eq!(queued["waiting_reason"], "no live worker offers data set cifar10");
        assert_eq!(job(&v1::Job::default())["waiting_reason"], "");
    }

    #[test]
    fn states_have_lowercase_names() {
        assert_eq!(state_name(v1::JobState::Cancelled as i32), "cancelled");
        assert_eq!(state_name(99), "unspecified");
        assert!(is_terminal(v1::JobState::Failed as i32) && !is_terminal(v1::JobState::Running as i32));
    }
}
