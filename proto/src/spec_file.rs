//! A job spec written by hand (a YAML mapping: `camp-worker run --spec`, a
//! pipeline file's node): the keys given over `JobSpec::defaults_for(stage)`,
//! so that a file saying `stage: sp` and no `lr` trains at sp's 0.01 with its
//! warm-up, as `camp submit sp` would. Unknown keys are refused, and an error
//! names the key.

use serde_yaml::{Mapping, Value};

use crate::spec::{JobSpec, Stage};
use crate::valid::ValidSpec;

/// A spec key that is wrong, and why (`key` is "spec" for the mapping as a whole).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SpecFileError {
    pub key: String,
    pub reason: String,
}

fn fail(key: impl Into<String>, reason: impl std::fmt::Display) -> SpecFileError {
    SpecFileError { key: key.into(), reason: reason.to_string() }
}

impl JobSpec {
    /// The spec a YAML mapping describes: its stage's defaults under the keys
    /// given, validated (energy plan included: every override pattern must match a module).
    pub fn from_yaml(value: &Value) -> Result<ValidSpec, SpecFileError> {
        let given = match value {
            Value::Mapping(map) => map.clone(),
            Value::Null => return Err(fail("spec", "missing (it needs at least stage, arch and dataset)")),
            _ => return Err(fail("spec", "expected a mapping of spec keys")),
        };
        let stage = match given.get("stage") {
            Some(Value::String(stage)) => Stage::parse(stage).map_err(|e| fail("stage", e.reason))?,
            Some(_) => return Err(fail("stage", "expected one of baseline, qat, sp, rl")),
            // As a spec has always read: no stage is the full-precision baseline.
            None => Stage::Baseline,
        };
        let Value::Mapping(base) = serde_yaml::to_value(JobSpec::defaults_for(stage)).map_err(|e| fail("spec", e))? else {
            return Err(fail("spec", "the defaults are not a mapping"));
        };
        let with = |keys: &Mapping| {
            let mut merged = base.clone();
            for (k, v) in keys {
                merged.insert(k.clone(), v.clone());
            }
            serde_yaml::from_value::<JobSpec>(Value::Mapping(merged))
        };
        let spec = with(&given).map_err(|err| {
            // Name the key: the first one that fails on the stage's defaults alone.
            given
                .iter()
                .find_map(|(k, v)| {
                    let one: Mapping = [(k.clone(), v.clone())].into_iter().collect();
                    with(&one).err().map(|e| fail(k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned), e))
                })
                .unwrap_or_else(|| fail("spec", err))
        })?;
        ValidSpec::new(spec).map_err(|e| fail(e.field, e.reason))
    }

    /// `from_yaml` of YAML text.
    pub fn from_yaml_text(text: &str) -> Result<ValidSpec, SpecFileError> {
        let value: Value = serde_yaml::from_str(text).map_err(|e| fail("spec", e))?;
        JobSpec::from_yaml(&value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_takes_its_stages_defaults_under_the_keys_given() {
        let sp = JobSpec::from_yaml_text("stage: sp\narch: preact_resnet20_cifar\ndataset: fashion-mnist\ninit_from: 3\n").unwrap();
        let want = JobSpec { dataset: "fashion-mnist".into(), init_from: 3, ..JobSpec::defaults_for(Stage::Sp) };
        assert_eq!(*sp, want, "sp's lr 0.01 and its x10 warm-up, not the baseline's 0.1");
        let rl = JobSpec::from_yaml_text("stage: rl\ndataset: cifar10\nalpha: 0.5\ninit_from: 4\n").unwrap();
        assert_eq!((rl.lr, rl.alpha, rl.lr_schedule.len()), (0.01, 0.5, 3));
        let base = JobSpec::from_yaml_text("stage: baseline\nepochs: 3\n").unwrap();
        assert_eq!(*base, JobSpec { epochs: 3, ..JobSpec::default() });
        assert_eq!(JobSpec::from_yaml_text("epochs: 3\n").unwrap(), base, "no stage: the baseline");
    }

    #[test]
    fn a_bad_key_is_named() {
        assert_eq!(JobSpec::from_yaml_text("stage: warmup\n").unwrap_err().key, "stage");
        assert_eq!(JobSpec::from_yaml_text("stage: 3\n").unwrap_err().key, "stage");
        assert_eq!(JobSpec::from_yaml_text("stage: qat\nlrr: 0.1\n").unwrap_err().key, "lrr");
        assert_eq!(JobSpec::from_yaml_text("stage: qat\nepochs: many\n").unwrap_err().key, "epochs");
        assert_eq!(JobSpec::from_yaml_text("stage: qat\nepochs: 0\n").unwrap_err().key, "epochs");
        assert_eq!(JobSpec::from_yaml_text("- a\n").unwrap_err().key, "spec");
    }
}
