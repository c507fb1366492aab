//! The reference's distiller schedule files (`--compress FILE.yaml`): one
//! quantizer with its bits and `bits_overrides`, one LR scheduler, and the
//! policies that apply them. Whatever camp cannot honour is an error naming the key.

use serde_yaml::{Mapping, Value};

use crate::spec::{ActQuant, BitsOverride, JobSpec, LrStep};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("schedule: {key}: {reason}")]
pub struct ScheduleError {
    pub key: String,
    pub reason: String,
}

fn err(key: impl Into<String>, reason: impl Into<String>) -> ScheduleError {
    ScheduleError { key: key.into(), reason: reason.into() }
}

/// What a schedule file sets in a job spec.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompressSchedule {
    pub quantizer: Option<QuantizerSettings>,
    pub lr_schedule: Option<Vec<LrStep>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantizerSettings {
    pub act_quant: ActQuant,
    pub bits_weights: Option<u32>,
    pub bits_activations: Option<u32>,
    pub bits_overrides: Vec<BitsOverride>,
    pub pact_weight_decay: Option<f64>,
}

impl CompressSchedule {
    /// Sets the spec's quantisation and LR schedule from this file.
    pub fn apply(&self, spec: &mut JobSpec) {
        if let Some(q) = &self.quantizer {
            spec.act_quant = q.act_quant;
            spec.bits_weights = q.bits_weights;
            spec.bits_activations = q.bits_activations;
            spec.bits_overrides = q.bits_overrides.clone();
            if q.pact_weight_decay.is_some() {
                spec.pact_weight_decay = q.pact_weight_decay;
            }
        }
        if let Some(lr) = &self.lr_schedule {
            spec.lr_schedule = lr.clone();
        }
    }
}

fn as_map<'a>(v: &'a Value, key: &str) -> Result<&'a Mapping, ScheduleError> {
    v.as_mapping().ok_or_else(|| err(key, "expected a mapping"))
}

fn key_str(k: &Value, at: &str) -> Result<String, ScheduleError> {
    k.as_str().map(str::to_string).ok_or_else(|| err(at, "keys must be strings"))
}

/// Bits: an integer in 1..8 or 32, or null for full precision.
fn bits(v: Option<&Value>, key: &str) -> Result<Option<u32>, ScheduleError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(b) if (1..=8).contains(&b) || b == 32 => Ok(if b == 32 { None } else { Some(b as u32) }),
            _ => Err(err(key, format!("bits must be 1..8, 32 or null, got {v:?}"))),
        },
    }
}

fn epoch(v: Option<&Value>, key: &str) -> Result<u64, ScheduleError> {
    v.and_then(Value::as_u64).ok_or_else(|| err(key, "expected a non-negative integer"))
}

/// Parses a distiller schedule for a run of `epochs` epochs.
pub fn parse(yaml: &str, epochs: u32) -> Result<CompressSchedule, ScheduleError> {
    let root: Value = serde_yaml::from_str(yaml).map_err(|e| err("(file)", e.to_string()))?;
    let root = as_map(&root, "(file)")?;
    let (mut quantizers, mut schedulers, mut policies) = (Vec::new(), Vec::new(), None);
    for (k, v) in root {
        match key_str(k, "(file)")?.as_str() {
            "version" => {}
            "quantizers" => {
                for (name, q) in as_map(v, "quantizers")? {
                    let name = key_str(name, "quantizers")?;
                    quantizers.push((name.clone(), parse_quantizer(q, &format!("quantizers.{name}"))?));
                }
            }
            "lr_schedulers" => {
                for (name, s) in as_map(v, "lr_schedulers")? {
                    let name = key_str(name, "lr_schedulers")?;
                    schedulers.push((name.clone(), parse_scheduler(s, &format!("lr_schedulers.{name}"))?));
                }
            }
            "policies" => policies = Some(v),
            other => return Err(err(other, "camp cannot honour this section (only quantizers, lr_schedulers and policies)")),
        }
    }
    if quantizers.len() > 1 {
        return Err(err("quantizers", "only one quantizer per schedule"));
    }
    if schedulers.len() > 1 {
        return Err(err("lr_schedulers", "only one LR scheduler per schedule"));
    }
    let mut out = CompressSchedule::default();
    let policies = match policies {
        Some(Value::Sequence(p)) => p.as_slice(),
        Some(_) => return Err(err("policies", "expected a list")),
        None => &[],
    };
    for (i, policy) in policies.iter().enumerate() {
        let at = format!("policies[{i}]");
        let p = as_map(policy, &at)?;
        let (mut kind, mut start, mut end) = (None, 0, u64::from(epochs));
        for (k, v) in p {
            let key = key_str(k, &at)?;
            match key.as_str() {
                "quantizer" | "lr_scheduler" => {
                    let instance = v
                        .get("instance_name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| err(format!("{at}.{key}.instance_name"), "missing"))?;
                    kind = Some((key.clone(), instance.to_string()));
                }
                "starting_epoch" => start = epoch(Some(v), &format!("{at}.starting_epoch"))?,
                "ending_epoch" => end = epoch(Some(v), &format!("{at}.ending_epoch"))?,
                "frequency" => {
                    if v.as_u64() != Some(1) {
                        return Err(err(format!("{at}.frequency"), "only frequency 1 (every epoch) is supported"));
                    }
                }
                other => return Err(err(format!("{at}.{other}"), "camp cannot honour this policy (only quantizer and lr_scheduler)")),
            }
        }
        let (kind, instance) = kind.ok_or_else(|| err(&at, "names neither a quantizer nor an lr_scheduler"))?;
        if start != 0 {
            return Err(err(format!("{at}.starting_epoch"), "policies must start at epoch 0"));
        }
        if kind == "quantizer" {
            let q = quantizers
                .iter()
                .find(|(n, _)| *n == instance)
                .ok_or_else(|| err(format!("{at}.quantizer.instance_name"), format!("no quantizer named '{instance}'")))?;
            if end < u64::from(epochs) {
                return Err(err(
                    format!("{at}.ending_epoch"),
                    format!("quantisation must last the whole run ({epochs} epochs), not end at {end}"),
                ));
            }
            out.quantizer = Some(q.1.clone());
        } else {
            let s = schedulers
                .iter()
                .find(|(n, _)| *n == instance)
                .ok_or_else(|| err(format!("{at}.lr_scheduler.instance_name"), format!("no lr_scheduler named '{instance}'")))?;
            // The scheduler is not stepped from `ending_epoch` on: later milestones never fire.
            out.lr_schedule = Some(s.1.iter().copied().filter(|m| u64::from(m.epoch) < end).collect());
        }
    }
    if let Some((name, _)) = quantizers.first() {
        if out.quantizer.is_none() {
            return Err(err(format!("quantizers.{name}"), "no policy applies it"));
        }
    }
    if let Some((name, _)) = schedulers.first() {
        if out.lr_schedule.is_none() {
            return Err(err(format!("lr_schedulers.{name}"), "no policy applies it"));
        }
    }
    Ok(out)
}

fn parse_quantizer(q: &Value, at: &str) -> Result<QuantizerSettings, ScheduleError> {
    let mut settings = QuantizerSettings {
        act_quant: ActQuant::Dorefa,
        bits_weights: None,
        bits_activations: None,
        bits_overrides: Vec::new(),
        pact_weight_decay: None,
    };
    let mut class = None;
    for (k, v) in as_map(q, at)? {
        let key = key_str(k, at)?;
        let here = format!("{at}.{key}");
        match key.as_str() {
            "class" => class = v.as_str().map(str::to_string),
            "bits_weights" => settings.bits_weights = Some(bits(Some(v), &here)?.unwrap_or(32)),
            "bits_activations" => settings.bits_activations = Some(bits(Some(v), &here)?.unwrap_or(32)),
            // PACT's clip starts at 8.0 here, as in the reference; another start is not offered.
            "act_clip_init_val" => {
                if v.as_f64() != Some(8.0) {
                    return Err(err(here, "only the reference's 8.0 is supported"));
                }
            }
            "act_clip_decay" => match v {
                Value::Null => {}
                v => match v.as_f64() {
                    Some(wd) if wd >= 0.0 => settings.pact_weight_decay = Some(wd),
                    _ => return Err(err(here, "expected a weight decay >= 0 or null")),
                },
            },
            "bits_overrides" => {
                for (pattern, o) in as_map(v, &here)? {
                    let pattern = key_str(pattern, &here)?;
                    let at_pattern = format!("{here}.{pattern}");
                    let o = as_map(o, &at_pattern)?;
                    for k in o.keys() {
                        let k = key_str(k, &at_pattern)?;
                        if k != "wts" && k != "acts" {
                            return Err(err(format!("{at_pattern}.{k}"), "only wts and acts"));
                        }
                    }
                    settings.bits_overrides.push(BitsOverride {
                        pattern: pattern.clone(),
                        wts: bits(o.get("wts"), &format!("{at_pattern}.wts"))?,
                        acts: bits(o.get("acts"), &format!("{at_pattern}.acts"))?,
                    });
                }
            }
            _ => return Err(err(here, "camp cannot honour this quantizer setting")),
        }
    }
    settings.act_quant = match class.as_deref() {
        Some("DorefaQuantizer") => ActQuant::Dorefa,
        Some("PACTQuantizer") => ActQuant::Pact,
        Some(other) => return Err(err(format!("{at}.class"), format!("'{other}' is not supported (DorefaQuantizer, PACTQuantizer)"))),
        None => return Err(err(format!("{at}.class"), "missing")),
    };
    Ok(settings)
}

fn parse_scheduler(s: &Value, at: &str) -> Result<Vec<LrStep>, ScheduleError> {
    let m = as_map(s, at)?;
    for k in m.keys() {
        let k = key_str(k, at)?;
        if !["class", "milestones", "gammas", "gamma"].contains(&k.as_str()) {
            return Err(err(format!("{at}.{k}"), "camp cannot honour this scheduler setting"));
        }
    }
    let list = |key: &str| -> Result<Vec<f64>, ScheduleError> {
        m.get(key)
            .and_then(Value::as_sequence)
            .ok_or_else(|| err(format!("{at}.{key}"), "expected a list"))?
            .iter()
            .map(|v| v.as_f64().ok_or_else(|| err(format!("{at}.{key}"), "expected numbers")))
            .collect()
    };
    let milestones = list("milestones")?;
    let gammas = match m.get("class").and_then(Value::as_str) {
        Some("MultiStepMultiGammaLR") => list("gammas")?,
        Some("MultiStepLR") => {
            let g = m.get("gamma").and_then(Value::as_f64).unwrap_or(0.1);
            vec![g; milestones.len()]
        }
        Some(other) => return Err(err(format!("{at}.class"), format!("'{other}' is not supported (MultiStepMultiGammaLR, MultiStepLR)"))),
        None => return Err(err(format!("{at}.class"), "missing")),
    };
    if gammas.len() != milestones.len() {
        return Err(err(format!("{at}.gammas"), format!("{} gammas for {} milestones", gammas.len(), milestones.len())));
    }
    milestones
        .iter()
        .zip(gammas)
        .map(|(&e, gamma)| {
            if e < 1.0 || e.fract() != 0.0 || gamma.is_nan() || gamma <= 0.0 {
                Err(err(format!("{at}.milestones"), format!("milestone {e} with gamma {gamma}: need whole epochs >= 1 and gamma > 0")))
            } else {
                Ok(LrStep { epoch: e as u32, gamma })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Stage;

    /// A schedule with the keys of the reference's preact_resnet20_cifar_pact_fp4.yaml.
    const FP4: &str = include_str!("../../testdata/preact_resnet20_cifar_pact_fp4.yaml");

    #[test]
    fn the_reference_fp4_schedule_sets_bits_overrides_and_lr() {
        let s = parse(FP4, 200).unwrap();
        let mut spec = JobSpec { stage: Stage::Qat, ..JobSpec::default() };
        s.apply(&mut spec);
        spec.validate().unwrap();
        assert_eq!((spec.bits_weights, spec.bits_activations, spec.act_quant), (Some(4), Some(4), ActQuant::Dorefa));
        assert_eq!(spec.bits_overrides.len(), 4);
        assert_eq!(spec.bits_overrides[1], BitsOverride { pattern: "layer1.0.pre_relu".into(), wts: None, acts: None });
        assert_eq!(spec.lr_schedule, crate::spec::reference_lr_schedule());
    }

    #[test]
    fn what_cannot_be_honoured_is_named() {
        let key = |yaml: &str| parse(yaml, 200).unwrap_err().key;
        assert_eq!(key("pruners: {}\n"), "pruners");
        assert_eq!(key(&FP4.replace("class: DorefaQuantizer", "class: WRPNQuantizer")), "quantizers.pact_quantizer.class");
        assert_eq!(key(&FP4.replace("bits_weights: 4", "bits_weights: 9")), "quantizers.pact_quantizer.bits_weights");
        assert_eq!(
            key(&FP4.replace("starting_epoch: 0\n    ending_epoch: 200", "starting_epoch: 5\n    ending_epoch: 200")),
            "policies[0].starting_epoch"
        );
        assert_eq!(key(&FP4.replace("ending_epoch: 200", "ending_epoch: 100")), "policies[0].ending_epoch");
        assert_eq!(key(&FP4.replace("gammas: [0.1, 0.1, 0.2]", "gammas: [0.1]")), "lr_schedulers.training_lr.gammas");
        assert_eq!(
            key(&FP4.replace("fc: {wts: null, acts: null}", "fc: {wts: null, bias: 3}")),
            "quantizers.pact_quantizer.bits_overrides.fc.bias"
        );
    }

    #[test]
    fn a_pact_schedule_sets_the_clips_own_decay() {
        let pact = FP4.replace("class: DorefaQuantizer", "class: PACTQuantizer\n    act_clip_decay: 0.001");
        let mut spec = JobSpec { stage: Stage::Qat, ..JobSpec::default() };
        parse(&pact, 200).unwrap().apply(&mut spec);
        assert_eq!((spec.act_quant, spec.pact_weight_decay), (ActQuant::Pact, Some(0.001)));
    }

    #[test]
    fn milestones_past_the_scheduler_end_never_fire() {
        let s = parse(&FP4.replace("ending_epoch: 191", "ending_epoch: 100"), 200).unwrap();
        assert_eq!(s.lr_schedule.unwrap(), vec![LrStep { epoch: 80, gamma: 0.1 }]);
    }
}
