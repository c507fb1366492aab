//! An experiment's results as rows, one per job: what `camp results` prints
//! (table, CSV, JSON), what `camp plot` and the dashboard's curve draw, and the
//! dashboard's CSV download. The rows are read back (`camp plot --rows`), so
//! their JSON and CSV shapes are part of the contract.

use serde::{Deserialize, Serialize};

use crate::spec::Stage;
use crate::text::{csv_field, exact};
use crate::v1;

/// One job's result, as `camp results --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub node: String,
    pub job_id: i64,
    pub stage: String,
    pub bits_weights: Option<u32>,
    pub bits_activations: Option<u32>,
    /// rl jobs only.
    #[serde(with = "crate::text::json_opt_f64_serde", default)]
    pub alpha: Option<f64>,
    /// The final model's test top-1, a fraction: the same evaluation as its
    /// energy and 4-bit share, so that a point of the curve is one network (the
    /// best epoch's top-1 may come from another routing than the final energy).
    #[serde(with = "crate::text::json_opt_f64_serde", default)]
    pub top1: Option<f64>,
    #[serde(with = "crate::text::json_opt_f64_serde", default)]
    pub normalized_energy: Option<f64>,
    /// sp/rl: the fraction of test images routed to the 4-bit path.
    #[serde(with = "crate::text::json_opt_f64_serde", default)]
    pub fullbit_share: Option<f64>,
    pub state: String,
}

impl ResultRow {
    /// From a job: the worker's result keys where it has them, else the spec's bits.
    pub fn from_job(job: &v1::Job) -> ResultRow {
        let spec = job.spec.clone().unwrap_or_default();
        let result = job.result.as_ref();
        let stage = Stage::parse(&spec.stage).ok();
        let spec_bits = |bits: Option<u32>| bits.or(stage.map(Stage::default_bits));
        ResultRow {
            node: job.node.clone(),
            job_id: job.id,
            stage: spec.stage.clone(),
            bits_weights: result.map(|r| r.bits_weights).filter(|&bits| bits > 0).or(spec_bits(spec.bits_weights)),
            bits_activations: result.map(|r| r.bits_activations).filter(|&bits| bits > 0).or(spec_bits(spec.bits_activations)),
            alpha: (stage == Some(Stage::Rl)).then(|| spec.alpha.unwrap_or(crate::JobSpec::default().alpha)),
            top1: result.map(|r| r.final_top1),
            normalized_energy: result.map(|r| r.normalized_energy),
            fullbit_share: result.and_then(|r| r.fullbit_share),
            state: crate::wire::state_name(job.state).to_owned(),
        }
    }

    /// `4/4`, `fp32`, `1/1 & 4/4` (sp: basic and 4-bit path), `α=0.1`: what tells this job apart in its pipeline.
    pub fn variant(&self) -> String {
        if let Some(alpha) = self.alpha {
            return format!("α={}", exact(alpha));
        }
        match (self.bits_weights, self.bits_activations) {
            (Some(32) | None, Some(32) | None) if self.stage == Stage::Baseline.as_str() => "fp32".into(),
            (Some(w), Some(a)) if self.stage == Stage::Sp.as_str() => format!("{w}/{a} & 4/4"),
            (Some(w), Some(a)) => format!("{w}/{a}"),
            _ => String::new(),
        }
    }
}

pub fn rows(experiment: &v1::Experiment) -> Vec<ResultRow> {
    experiment.jobs.iter().map(ResultRow::from_job).collect()
}

pub const CSV_HEADER: &str = "node,job_id,stage,bits_weights,bits_activations,alpha,top1,normalized_energy,fullbit_share,state";

pub fn rows_csv(rows: &[ResultRow]) -> String {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let mut out = format!("{CSV_HEADER}\n");
    for row in rows {
        let cells = [
            csv_field(&row.node).into_owned(),
            row.job_id.to_string(),
            csv_field(&row.stage).into_owned(),
            opt(row.bits_weights.map(|v| v.to_string())),
            opt(row.bits_activations.map(|v| v.to_string())),
            opt(row.alpha.map(exact)),
            opt(row.top1.map(exact)),
            opt(row.normalized_energy.map(exact)),
            opt(row.fullbit_share.map(exact)),
            row.state.clone(),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// Examples for the tests of what reads results (here and in the clients).
pub mod examples {
    use crate::spec::Stage;
    use crate::v1;
    use crate::JobSpec;

    /// A job whose result has the figures of `result`, a JSON object in the result's shape ("" = no result).
    pub fn job(id: i64, node: &str, spec: JobSpec, state: v1::JobState, result: &str) -> v1::Job {
        v1::Job {
            id,
            node: node.into(),
            experiment_id: 3,
            spec: Some(spec.to_proto()),
            state: state as i32,
            result: (!result.is_empty()).then(|| serde_json::from_str(result).expect("a result in the result's shape")),
            ..Default::default()
        }
    }

    /// A small experiment with a row of every kind (fixed precision, sp, rl; failed and
    /// cancelled jobs), for tests of what reads results.
    pub fn example_experiment() -> v1::Experiment {
        use v1::JobState::*;
        let qat = |bits| JobSpec { bits_weights: Some(bits), bits_activations: Some(bits), ..JobSpec::defaults_for(Stage::Qat) };
        v1::Experiment {
            id: 3,
            name: "camp-r20".into(),
            owner: "ada".into(),
            created_at_ms: 1_000,
            jobs: vec![
                job(
                    10,
                    "baseline",
                    JobSpec::default(),
                    Succeeded,
                    r#"{"best_top1": 0.9186, "final_top1": 0.9186, "normalized_energy": 70.77, "energy_pj": 1.0e8}"#,
                ),
                job(
                    11,
                    "qat4",
                    qat(4),
                    Succeeded,
                    r#"{"best_top1": 0.912, "final_top1": 0.912, "normalized_energy": 1.0, "bits_weights": 4, "bits_activations": 4}"#,
                ),
                job(12, "qat1", qat(1), Failed, ""),
                job(
                    13,
                    "sp",
                    JobSpec { init_from: 11, ..JobSpec::defaults_for(Stage::Sp) },
                    Succeeded,
                    r#"{"best_top1": 0.911, "best_epoch": 1, "final_top1": 0.905, "normalized_energy": 0.62, "fullbit_share": 0.48}"#,
                ),
                job(
                    14,
                    "rl-0.1",
                    JobSpec { alpha: 0.1, init_from: 13, ..JobSpec::defaults_for(Stage::Rl) },
                    Succeeded,
                    r#"{"best_top1": 0.899, "final_top1": 0.899, "normalized_energy": 0.41, "fullbit_share": 0.29}"#,
                ),
                job(15, "rl-0.5", JobSpec { alpha: 0.5, init_from: 13, ..JobSpec::defaults_for(Stage::Rl) }, Cancelled, ""),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::examples::example_experiment as sample_experiment;
    use super::*;

    #[test]
    fn rows_come_from_results_and_specs() {
        let rows = rows(&sample_experiment());
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].variant(), "fp32");
        assert_eq!((rows[0].bits_weights, rows[0].top1), (Some(32), Some(0.9186)));
        assert_eq!((rows[1].bits_weights, rows[1].bits_activations), (Some(4), Some(4)));
        assert_eq!(rows[2].variant(), "1/1");
        assert_eq!((rows[2].top1, rows[2].state.as_str()), (None, "failed"));
        assert_eq!(rows[3].fullbit_share, Some(0.48));
        assert_eq!(
            rows[3].top1,
            Some(0.905),
            "the final model's top-1, from the evaluation its energy and share come from, not the best epoch's"
        );
        assert_eq!(rows[3].alpha, None);
        assert_eq!(rows[4].alpha, Some(0.1));
        assert_eq!(rows[4].variant(), "α=0.1");

        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(
            json[4],
            serde_json::json!({
                "node": "rl-0.1", "job_id": 14, "stage": "rl", "bits_weights": 1, "bits_activations": 1,
                "alpha": 0.1, "top1": 0.899, "normalized_energy": 0.41, "fullbit_share": 0.29, "state": "succeeded"
            })
        );

        let csv = rows_csv(&rows);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[3], "qat1,12,qat,1,1,,,,,failed");
        assert_eq!(lines[5], "rl-0.1,14,rl,1,1,0.1,0.899,0.41,0.29,succeeded");
    }

    #[test]
    fn rows_keep_nan_and_infinities_through_json() {
        let mut row = rows(&sample_experiment())[4].clone();
        row.top1 = Some(f64::NAN);
        row.normalized_energy = Some(f64::INFINITY);
        row.fullbit_share = None;
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(
            (&json["top1"], &json["normalized_energy"], &json["fullbit_share"]),
            (&serde_json::json!("NaN"), &serde_json::json!("inf"), &serde_json::Value::Null)
        );
        let back: ResultRow = serde_json::from_value(json).unwrap();
        assert!(back.top1.unwrap().is_nan());
        assert_eq!((back.normalized_energy, back.fullbit_share), (Some(f64::INFINITY), None));
        // Rows written before (plain numbers, keys left out) still read.
        let old: ResultRow = serde_json::from_str(
            r#"{"node": "sp", "job_id": 1, "stage": "sp", "bits_weights": 1, "bits_activations": 1, "top1": 0.5, "state": "succeeded"}"#,
        )
        .unwrap();
        assert_eq!((old.top1, old.alpha), (Some(0.5), None));
        let err = serde_json::from_str::<ResultRow>(
            r#"{"node": "sp", "job_id": 1, "stage": "sp", "bits_weights": 1, "bits_activations": 1, "top1": "lots", "state": "succeeded"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        let csv = rows_csv(&[row]);
        assert!(csv.lines().nth(1).unwrap().contains(",NaN,inf,,"), "{csv}");
    }
}
