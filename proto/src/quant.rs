//! Which layers are quantised, at how many bits: the stage's defaults (the
//! reference's `bits_overrides`) under the job's own overrides, matched as glob
//! patterns on module paths.

use serde::Serialize;

use crate::spec::{invalid, BitsOverride, JobSpec, SpecError};

/// Full-match glob: `*` matches any run of characters (dots included), `?` one.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

fn full(pattern: &str) -> BitsOverride {
    BitsOverride { pattern: pattern.into(), wts: None, acts: None }
}

/// The reference's defaults: the stem, the first block's pre-activation, the
/// final ReLU and the head stay in full precision; in the dual-path network the
/// fullbit blocks and the gates run at 4 bits.
pub fn default_overrides(dual_path: bool) -> Vec<BitsOverride> {
    if dual_path {
        vec![
            full("conv1"),
            full("layer1.0.basic_block.pre_relu"),
            full("final_relu"),
            full("fc"),
            BitsOverride { pattern: "layer*.*.fullbit_block.*".into(), wts: Some(4), acts: Some(4) },
            BitsOverride { pattern: "layer*.*.gate.*".into(), wts: Some(4), acts: Some(4) },
        ]
    } else {
        vec![full("conv1"), full("layer1.0.pre_relu"), full("final_relu"), full("fc")]
    }
}

/// Bits per module path for one job. `None` (or 32) means full precision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BitsPlan {
    pub weights: Option<u32>,
    pub activations: Option<u32>,
    /// Job overrides first, then the stage's defaults; the first match wins.
    pub overrides: Vec<BitsOverride>,
}

fn precision(bits: Option<u32>) -> Option<u32> {
    bits.filter(|&b| b != 32)
}

impl BitsPlan {
    pub fn for_spec(spec: &JobSpec) -> BitsPlan {
        let dual_path = spec.stage.is_dual_path();
        let quantised = spec.stage != crate::spec::Stage::Baseline;
        let mut overrides = spec.bits_overrides.clone();
        if quantised {
            overrides.extend(default_overrides(dual_path));
        }
        BitsPlan { weights: precision(Some(spec.weight_bits())), activations: precision(Some(spec.activation_bits())), overrides }
    }

    fn matching(&self, path: &str) -> Option<&BitsOverride> {
        self.overrides.iter().find(|o| glob_match(&o.pattern, path))
    }

    /// Weight bits of the conv or linear layer at `path`.
    pub fn weight_bits(&self, path: &str) -> Option<u32> {
        precision(self.matching(path).map_or(self.weights, |o| o.wts))
    }

    /// Activation bits of the ReLU at `path`.
    pub fn act_bits(&self, path: &str) -> Option<u32> {
        precision(self.matching(path).map_or(self.activations, |o| o.acts))
    }

    /// A job's pattern that matches no module is a mistake, not a no-op.
    pub fn check_patterns(spec: &JobSpec, module_paths: &[String]) -> Result<(), SpecError> {
        for o in &spec.bits_overrides {
            if !module_paths.iter().any(|p| glob_match(&o.pattern, p)) {
                return Err(invalid("bits_overrides", format!("pattern '{}' matches no module of {}", o.pattern, spec.model_arch())));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Stage;

    #[test]
    fn globs_match_whole_paths() {
        assert!(glob_match("layer*.*.fullbit_block.*", "layer2.0.fullbit_block.conv1"));
        assert!(!glob_match("layer*.*.fullbit_block.*", "layer2.0.basic_block.conv1"));
        assert!(glob_match("conv1", "conv1"));
        assert!(!glob_match("conv1", "layer1.0.conv1"));
        assert!(glob_match("layer1.?.conv?", "layer1.2.conv1"));
    }

    #[test]
    fn qat_defaults_keep_stem_head_and_first_preact_in_full_precision() {
        let plan = BitsPlan::for_spec(&JobSpec { stage: Stage::Qat, ..JobSpec::default() });
        assert_eq!(plan.weight_bits("conv1"), None);
        assert_eq!(plan.weight_bits("fc"), None);
        assert_eq!(plan.act_bits("layer1.0.pre_relu"), None);
        assert_eq!(plan.act_bits("final_relu"), None);
        assert_eq!(plan.weight_bits("layer1.0.conv1"), Some(4));
        assert_eq!(plan.act_bits("layer1.1.pre_relu"), Some(4));
        let base = BitsPlan::for_spec(&JobSpec::default());
        assert_eq!(base.weight_bits("layer1.0.conv1"), None);
    }

    #[test]
    fn dual_path_defaults_and_job_overrides_come_first() {
        let spec = JobSpec {
            stage: Stage::Sp,
            bits_overrides: vec![BitsOverride { pattern: "layer3.*.gate.*".into(), wts: Some(8), acts: None }],
            ..JobSpec::default()
        };
        let plan = BitsPlan::for_spec(&spec);
        assert_eq!(plan.weight_bits("layer1.0.basic_block.conv1"), Some(1));
        assert_eq!(plan.weight_bits("layer1.0.fullbit_block.conv1"), Some(4));
        assert_eq!(plan.act_bits("layer1.0.basic_block.pre_relu"), None);
        assert_eq!(plan.act_bits("layer1.0.fullbit_block.pre_relu"), Some(4));
        assert_eq!(plan.weight_bits("layer2.1.gate.conv1"), Some(4));
        assert_eq!(plan.weight_bits("layer3.1.gate.conv1"), Some(8));
        assert_eq!(plan.act_bits("layer3.1.gate.relu"), None);
    }

    #[test]
    fn a_pattern_matching_nothing_is_named() {
        let spec = JobSpec { stage: Stage::Qat, bits_overrides: vec![full("layer9.*")], ..JobSpec::default() };
        let paths = vec!["conv1".to_string(), "layer1.0.conv1".to_string()];
        let err = BitsPlan::check_patterns(&spec, &paths).unwrap_err();
        assert_eq!(err.field, "bits_overrides");
        assert!(err.reason.contains("layer9.*"));
    }
}
