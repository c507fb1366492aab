//! A finished run's result, typed (`camp.v1.JobResult`, generated with serde):
//! the worker fills it, the coordinator checks and stores it (as JSON, in the
//! proto's field names), clients read its fields. The bounds of each figure
//! are here, once.

pub use crate::v1::JobResult;

use crate::limits::{check_name, MAX_NAME_BYTES, MAX_RESULT_BLOCKS};

/// A result figure the contract refuses; `field` is the proto field's name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ResultError {
    pub field: &'static str,
    pub reason: String,
}

fn fail(field: &'static str, reason: impl Into<String>) -> ResultError {
    ResultError { field, reason: reason.into() }
}

/// `Some(x)` for a finite `x`: what an optional figure carries (a diverged
/// loss or an undefined throughput is unset, never NaN).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl JobResult {
    /// Checks every figure: accuracies and shares in [0, 1], energies and
    /// throughput finite and not negative, losses finite, the table named, at
    /// most `MAX_RESULT_BLOCKS` block shares.
    pub fn check(&self) -> Result<(), ResultError> {
        let fraction = |field, x: f64| {
            if x.is_finite() && (0.0..=1.0).contains(&x) {
                Ok(())
            } else {
                Err(fail(field, format!("must be a fraction in [0, 1], got {x}")))
            }
        };
        let not_negative = |field, x: f64| {
            if x.is_finite() && x >= 0.0 {
                Ok(())
            } else {
                Err(fail(field, format!("must be a finite number of at least 0, got {x}")))
            }
        };
        let is_finite =
            |field, x: f64| if x.is_finite() { Ok(()) } else { Err(fail(field, format!("must be finite (or unset), got {x}"))) };
        fraction("best_top1", self.best_top1)?;
        fraction("final_top1", self.final_top1)?;
        fraction("final_top5", self.final_top5)?;
        for (field, x) in [("final_test_loss", self.final_test_loss), ("final_train_loss", self.final_train_loss)] {
            if let Some(x) = x {
                is_finite(field, x)?;
            }
        }
        if let Some(top1) = self.final_train_top1 {
            fraction("final_train_top1", top1)?;
        }
        if self.steps < 0 {
            return Err(fail("steps", format!("must not be negative, got {}", self.steps)));
        }
        if let Some(x) = self.images_per_s {
            not_negative("images_per_s", x)?;
        }
        not_negative("energy_pj", self.energy_pj)?;
        not_negative("normalized_energy", self.normalized_energy)?;
        not_negative("stem_head_pj", self.stem_head_pj)?;
        check_name(&self.energy_table, MAX_NAME_BYTES).map_err(|e| fail("energy_table", e.to_string()))?;
        if let Some(share) = self.fullbit_share {
            fraction("fullbit_share", share)?;
        }
        if self.block_fullbit_shares.len() > MAX_RESULT_BLOCKS {
            return Err(fail(
                "block_fullbit_shares",
                format!("{} shares; at most {MAX_RESULT_BLOCKS} blocks are allowed", self.block_fullbit_shares.len()),
            ));
        }
        for &share in &self.block_fullbit_shares {
            fraction("block_fullbit_shares", share)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> JobResult {
        JobResult {
            best_top1: 0.9,
            best_epoch: 3,
            final_top1: 0.89,
            final_top5: 0.99,
            final_test_loss: Some(0.3),
            energy_pj: 1e6,
            normalized_energy: 0.5,
            energy_table: "horowitz-45nm".into(),
            bits_weights: 1,
            bits_activations: 1,
            fullbit_share: Some(0.4),
            block_fullbit_shares: vec![0.5, 0.3],
            ..JobResult::default()
        }
    }

    #[test]
    fn each_figure_out_of_its_range_is_named() {
        ok().check().unwrap();
        let field = |mutate: fn(&mut JobResult)| {
            let mut r = ok();
            mutate(&mut r);
            r.check().unwrap_err().field
        };
        assert_eq!(field(|r| r.best_top1 = 1.5), "best_top1");
        assert_eq!(field(|r| r.final_top1 = f64::NAN), "final_top1");
        assert_eq!(field(|r| r.final_test_loss = Some(f64::INFINITY)), "final_test_loss");
        assert_eq!(field(|r| r.final_train_top1 = Some(-0.1)), "final_train_top1");
        assert_eq!(field(|r| r.steps = -1), "steps");
        assert_eq!(field(|r| r.images_per_s = Some(f64::NAN)), "images_per_s");
        assert_eq!(field(|r| r.energy_pj = -1.0), "energy_pj");
        assert_eq!(field(|r| r.energy_table = "a\nb".into()), "energy_table");
        assert_eq!(field(|r| r.energy_table = "x".repeat(MAX_NAME_BYTES + 1)), "energy_table");
        assert_eq!(field(|r| r.fullbit_share = Some(2.0)), "fullbit_share");
        assert_eq!(field(|r| r.block_fullbit_shares = vec![0.5; MAX_RESULT_BLOCKS + 1]), "block_fullbit_shares");
        assert_eq!(field(|r| r.block_fullbit_shares = vec![0.5, f64::NAN]), "block_fullbit_shares");
    }

    #[test]
    fn the_json_shape_is_the_protos_and_reads_older_rows() {
        let json = serde_json::to_value(ok()).unwrap();
        assert_eq!(json["best_top1"], 0.9);
        assert_eq!(json["final_train_loss"], serde_json::Value::Null, "unset is null");
        assert_eq!(serde_json::from_value::<JobResult>(json).unwrap(), ok());
        // A row written before the result was typed: NaN was stored as null, and fields were missing.
        let old: JobResult = serde_json::from_str(r#"{"best_top1":0.5,"images_per_s":null,"final_test_loss":null}"#).unwrap();
        assert_eq!((old.best_top1, old.images_per_s, old.energy_table.as_str()), (0.5, None, ""));
    }
}
