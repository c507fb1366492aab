//! The reference's distiller schedule files (`--compress FILE.yaml`): one
//! quantizer with its bits and `bits_overrides`, one LR scheduler, and the
//! policies that apply them. Whatever camp cannot honour is an error naming the key.
//!
//! The quantizer is read as distiller 0.3.1 reads it: its `bits_overrides` are
//! the whole list, in file order, first match wins (a layer no entry matches is
//! quantised at the quantizer's bits, `conv1` and `fc` included); an entry
//! without `wts` or `acts` takes the quantizer's bits for it, and `null` (or 32)
//! keeps it in full precision.

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
    /// The file's entries, in file order.
    pub bits_overrides: Vec<OverrideEntry>,
    pub pact_weight_decay: Option<f64>,
}

/// One `bits_overrides` entry as the file gives it. For `wts` and `acts`:
/// `None`, the key is absent (the quantizer's bits, as distiller's
/// `v.get('wts', default)`); `Some(None)`, `null` or 32 (full precision);
/// `Some(Some(b))`, b bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideEntry {
    pub pattern: String,
    pub wts: Option<Option<u32>>,
    pub acts: Option<Option<u32>>,
}

fn full_precision_as_none(bits: u32) -> Option<u32> {
    Some(bits).filter(|&b| b != 32)
}

impl QuantizerSettings {
    /// The file's list as the spec's overrides, entries without `wts` or
    /// `acts` at `weights` and `activations` bits (the job's own).
    pub fn resolved_overrides(&self, weights: u32, activations: u32) -> Vec<BitsOverride> {
        self.bits_overrides
            .iter()
            .map(|o| BitsOverride {
                pattern: o.pattern.clone(),
                wts: o.wts.unwrap_or(full_precision_as_none(weights)),
                acts: o.acts.unwrap_or(full_precision_as_none(activations)),
            })
            .collect()
    }
}

impl CompressSchedule {
    /// Sets the spec's quantisation and LR schedule from this file. A file with
    /// a quantizer replaces the spec's whole list of overrides with its own (an
    /// empty one if it gives none) and turns the stage's defaults off; a file
    /// without one leaves the spec's quantisation alone.
    pub fn apply(&self, spec: &mut JobSpec) {
        if let Some(q) = &self.quantizer {
            spec.act_quant = q.act_quant;
            spec.bits_weights = q.bits_weights;
            spec.bits_activations = q.bits_activations;
            if q.pact_weight_decay.is_some() {
                spec.pact_weight_decay = q.pact_weight_decay;
            }
        }
        self.apply_bits_overrides(spec);
        if let Some(lr) = &self.lr_schedule {
            spec.lr_schedule = lr.clone();
        }
    }

    /// Sets the spec's overrides to the file's list (nothing without a
    /// quantizer), its entries without `wts` or `acts` at the spec's bits as
    /// they are now: call it again after changing the spec's bits (a `--bits`
    /// flag), so that they follow.
    pub fn apply_bits_overrides(&self, spec: &mut JobSpec) {
        if let Some(q) = &self.quantizer {
            spec.bits_overrides = q.resolved_overrides(spec.weight_bits(), spec.activation_bits());
            spec.default_overrides = false;
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
            // `bits_overrides:` left empty is an empty list, as distiller takes it.
            "bits_overrides" if v.is_null() => {}
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
                    // An absent key is the quantizer's bits; `null` is full precision.
                    let entry = |key: &str| o.get(key).map(|v| bits(Some(v), &format!("{at_pattern}.{key}"))).transpose();
                    settings.bits_overrides.push(OverrideEntry { pattern: pattern.clone(), wts: entry("wts")?, acts: entry("acts")? });
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

    /// The keys and values of the reference's configs/preact_resnet20_cifar_pact_fp4.yaml
    /// and configs/preact_resnet20_cifar_pact_bool.yaml (proto/tests/distiller.rs
    /// checks every layer's bits under all five of its files).
    const FP4: &str = include_str!("../../testdata/distiller/preact_resnet20_cifar_pact_fp4.yaml");
    const BOOL: &str = include_str!("../../testdata/distiller/preact_resnet20_cifar_pact_bool.yaml");

    #[test]
    fn the_reference_fp4_schedule_sets_bits_overrides_and_lr() {
        let s = parse(FP4, 200).unwrap();
        let mut spec = JobSpec { stage: Stage::Qat, ..JobSpec::default() };
        s.apply(&mut spec);
        crate::valid::ValidSpec::new(spec.clone()).unwrap();
        assert_eq!((spec.bits_weights, spec.bits_activations, spec.act_quant), (Some(4), Some(4), ActQuant::Dorefa));
        assert_eq!(spec.bits_overrides.len(), 4);
        assert_eq!(spec.bits_overrides[1], BitsOverride { pattern: "layer1.0.pre_relu".into(), wts: None, acts: None });
        assert!(!spec.default_overrides, "the file's list is the whole list");
        assert_eq!(spec.lr_schedule, crate::spec::reference_lr_schedule());
    }

    #[test]
    fn entries_keep_the_files_order_and_an_absent_key_is_the_quantizers_bits() {
        let yaml = FP4.replace("bits_weights: 4", "bits_weights: 3").replace("bits_activations: 4", "bits_activations: 2").replace(
            "      conv1: {wts: null, acts: null}\n",
            "      layer3.*: {wts: 8}\n      layer2.*: {acts: 32}\n      layer1.*: {}\n      conv1: {wts: null, acts: null}\n",
        );
        let q = parse(&yaml, 200).unwrap().quantizer.unwrap();
        let patterns: Vec<&str> = q.bits_overrides.iter().map(|o| o.pattern.as_str()).collect();
        assert_eq!(patterns, ["layer3.*", "layer2.*", "layer1.*", "conv1", "layer1.0.pre_relu", "final_relu", "fc"]);
        assert_eq!(q.bits_overrides[0], OverrideEntry { pattern: "layer3.*".into(), wts: Some(Some(8)), acts: None });
        assert_eq!(q.bits_overrides[1].acts, Some(None), "32 is full precision");
        assert_eq!((q.bits_overrides[2].wts, q.bits_overrides[2].acts), (None, None));
        assert_eq!(q.bits_overrides[3].wts, Some(None), "null is full precision");

        let mut spec = JobSpec { stage: Stage::Qat, ..JobSpec::default() };
        parse(&yaml, 200).unwrap().apply(&mut spec);
        let bits: Vec<(Option<u32>, Option<u32>)> = spec.bits_overrides.iter().map(|o| (o.wts, o.acts)).collect();
        assert_eq!(bits[..4], [(Some(8), Some(2)), (Some(3), None), (Some(3), Some(2)), (None, None)]);
    }

    #[test]
    fn a_file_without_a_quantizer_leaves_the_quantisation_alone() {
        let lr_only = "lr_schedulers:\n  lr: {class: MultiStepLR, milestones: [5]}\npolicies:\n  - lr_scheduler: {instance_name: lr}\n";
        let own = vec![BitsOverride { pattern: "layer3.*".into(), wts: Some(8), acts: None }];
        let mut spec = JobSpec { stage: Stage::Qat, bits_weights: Some(2), bits_overrides: own.clone(), ..JobSpec::default() };
        parse(lr_only, 200).unwrap().apply(&mut spec);
        assert_eq!((spec.bits_weights, spec.bits_overrides, spec.default_overrides), (Some(2), own, true));
        assert_eq!(spec.lr_schedule, vec![LrStep { epoch: 5, gamma: 0.1 }]);
    }

    #[test]
    fn a_quantizer_without_bits_overrides_gives_an_empty_whole_list() {
        let start = FP4.find("    bits_overrides:").unwrap();
        let end = FP4.find("lr_schedulers:").unwrap();
        for yaml in [format!("{}{}", &FP4[..start], &FP4[end..]), format!("{}    bits_overrides:\n{}", &FP4[..start], &FP4[end..])] {
            let mut spec = JobSpec { stage: Stage::Qat, ..JobSpec::default() };
            parse(&yaml, 200).unwrap().apply(&mut spec);
            assert_eq!((spec.bits_overrides.len(), spec.default_overrides), (0, false), "{yaml}");
        }
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
        assert_eq!(parse(BOOL, 200).unwrap().lr_schedule.unwrap(), crate::spec::reference_lr_schedule());
        let s = parse(&BOOL.replace("ending_epoch: 191", "ending_epoch: 100"), 200).unwrap();
        assert_eq!(s.lr_schedule.unwrap(), vec![LrStep { epoch: 80, gamma: 0.1 }]);
    }
}
