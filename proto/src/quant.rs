//! Which layers are quantised, at how many bits: the stage's defaults (the
//! reference's `bits_overrides`) under the job's own overrides, matched as glob
//! patterns on module paths.
//!
//! Patterns are compiled once per job into one automaton (`globset`, which
//! builds on the `regex` crate): matching takes time linear in the path
//! whatever the pattern holds, so a pattern of thirty `*`s cannot pin a core,
//! and their length and number are capped (`limits`).

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::limits::{excerpt, MAX_OVERRIDES, MAX_PATTERN_BYTES};
use crate::spec::{BitsOverride, JobSpec};
use crate::spec_error::{invalid, SpecError};

/// Override patterns compiled into one matcher; the first pattern that matches a path wins.
///
/// Syntax: `*` matches any run of characters (dots included), `?` one
/// character, `[abc]` one of a set, `{a,b}` either alternative; `\` escapes.
#[derive(Debug, Clone)]
pub struct Patterns {
    set: GlobSet,
}

impl Patterns {
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, SpecError> {
        let mut builder = GlobSetBuilder::new();
        for (i, pattern) in patterns.into_iter().enumerate() {
            if i >= MAX_OVERRIDES * 2 {
                return Err(invalid("bits_overrides", format!("at most {MAX_OVERRIDES} patterns")));
            }
            builder.add(compile(pattern)?);
        }
        let set = builder.build().map_err(|e| invalid("bits_overrides", format!("patterns do not compile: {e}")))?;
        Ok(Patterns { set })
    }

    /// Index of the first pattern that matches the whole of `path`.
    pub fn first_match(&self, path: &str) -> Option<usize> {
        self.set.matches(path).into_iter().min()
    }

    /// Indices of every pattern that matches `path`.
    pub fn all_matches(&self, path: &str) -> Vec<usize> {
        self.set.matches(path)
    }
}

/// One pattern, checked and compiled. A run of `*` means what one `*` means,
/// so it is folded to one before compiling.
fn compile(pattern: &str) -> Result<globset::Glob, SpecError> {
    let at = || format!("pattern '{}'", excerpt(pattern));
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(invalid(
            "bits_overrides",
            format!("a pattern is {} bytes long; at most {MAX_PATTERN_BYTES} are allowed", pattern.len()),
        ));
    }
    if pattern.trim().is_empty() {
        return Err(invalid("bits_overrides", "a pattern must not be empty"));
    }
    if pattern.chars().any(char::is_control) {
        return Err(invalid("bits_overrides", format!("{}: control characters (NUL, newlines) are not allowed", at())));
    }
    let mut folded = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if !(c == '*' && folded.ends_with('*') && !folded.ends_with("\\*")) {
            folded.push(c);
        }
    }
    GlobBuilder::new(&folded)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map_err(|e| invalid("bits_overrides", format!("{}: {}", at(), e.kind())))
}

/// Full-match glob of one pattern against one path (tests and one-off checks).
pub fn glob_match(pattern: &str, path: &str) -> Result<bool, SpecError> {
    Ok(Patterns::new([pattern])?.first_match(path).is_some())
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
#[derive(Debug, Clone, Serialize)]
pub struct BitsPlan {
    pub weights: Option<u32>,
    pub activations: Option<u32>,
    /// Job overrides first, then the stage's defaults (unless the job's list is
    /// the whole list); the first match wins.
    pub overrides: Vec<BitsOverride>,
    #[serde(skip)]
    patterns: Patterns,
    /// How many of `overrides` are the job's own (the rest are the stage's defaults).
    #[serde(skip)]
    own: usize,
}

impl PartialEq for BitsPlan {
    fn eq(&self, other: &Self) -> bool {
        (self.weights, self.activations, &self.overrides) == (other.weights, other.activations, &other.overrides)
    }
}

fn precision(bits: Option<u32>) -> Option<u32> {
    bits.filter(|&b| b != 32)
}

impl BitsPlan {
    /// The plan of `spec`, its patterns compiled (a pattern that does not compile is named).
    pub fn for_spec(spec: &JobSpec) -> Result<BitsPlan, SpecError> {
        if spec.bits_overrides.len() > MAX_OVERRIDES {
            return Err(invalid("bits_overrides", format!("{} overrides; at most {MAX_OVERRIDES} are allowed", spec.bits_overrides.len())));
        }
        let dual_path = spec.stage.is_dual_path();
        let quantised = spec.stage != crate::spec::Stage::Baseline;
        let mut overrides = spec.bits_overrides.clone();
        if quantised && spec.default_overrides {
            overrides.extend(default_overrides(dual_path));
        }
        let patterns = Patterns::new(overrides.iter().map(|o| o.pattern.as_str()))?;
        Ok(BitsPlan {
            weights: precision(Some(spec.weight_bits())),
            activations: precision(Some(spec.activation_bits())),
            overrides,
            patterns,
            own: spec.bits_overrides.len(),
        })
    }

    fn matching(&self, path: &str) -> Option<&BitsOverride> {
        self.patterns.first_match(path).map(|i| &self.overrides[i])
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
    pub fn check_patterns(&self, module_paths: &[String]) -> Result<(), SpecError> {
        let mut matched = vec![false; self.own];
        for path in module_paths {
            for i in self.patterns.all_matches(path) {
                if i < self.own {
                    matched[i] = true;
                }
            }
        }
        match matched.iter().position(|m| !m) {
            Some(i) => Err(invalid(
                "bits_overrides",
                format!("pattern '{}' matches no module of the network", excerpt(&self.overrides[i].pattern)),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::spec::Stage;

    fn matches(pattern: &str, path: &str) -> bool {
        glob_match(pattern, path).unwrap()
    }

    #[test]
    fn globs_match_whole_paths() {
        assert!(matches("layer*.*.fullbit_block.*", "layer2.0.fullbit_block.conv1"));
        assert!(!matches("layer*.*.fullbit_block.*", "layer2.0.basic_block.conv1"));
        assert!(matches("conv1", "conv1"));
        assert!(!matches("conv1", "layer1.0.conv1"));
        assert!(matches("layer1.?.conv?", "layer1.2.conv1"));
        assert!(matches("layer**.conv1", "layer1.0.conv1"));
        assert!(matches("layer{1,3}.*.conv1", "layer3.0.conv1"));
        assert!(!matches("layer{1,3}.*.conv1", "layer2.0.conv1"));
    }

    #[test]
    fn pathological_patterns_are_matched_or_refused_within_a_bound() {
        // Thirty `*` then a literal made the old backtracking matcher run for hours.
        let started = Instant::now();
        let thirty = format!("{}conv1", "*".repeat(30));
        let path = "layer3.8.fullbit_block.conv2".repeat(4);
        assert!(!matches(&thirty, &path));
        assert!(matches(&thirty, "layer1.0.conv1"));
        // Every alternation and class the syntax has, at the longest length allowed.
        let worst = format!("{}x", "*?[a-z]{a,b}".repeat(MAX_PATTERN_BYTES / 12 - 1));
        let plan = BitsPlan::for_spec(&JobSpec {
            stage: Stage::Qat,
            bits_overrides: (0..MAX_OVERRIDES).map(|_| BitsOverride { pattern: worst.clone(), wts: Some(4), acts: None }).collect(),
            ..JobSpec::default()
        })
        .unwrap();
        assert_eq!(plan.weight_bits(&path), Some(4));
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        // 100,000 `*` is refused by length, before anything is compiled.
        let err = glob_match(&"*".repeat(100_000), "conv1").unwrap_err();
        assert_eq!(err.field, "bits_overrides");
        assert!(err.reason.contains("at most 256"), "{}", err.reason);
        let err = glob_match("conv\u{0}1", "conv1").unwrap_err();
        assert!(err.reason.contains("control characters"), "{}", err.reason);
        assert_eq!(glob_match("a[", "a").unwrap_err().field, "bits_overrides");
    }

    #[test]
    fn qat_defaults_keep_stem_head_and_first_preact_in_full_precision() {
        let plan = BitsPlan::for_spec(&JobSpec { stage: Stage::Qat, ..JobSpec::default() }).unwrap();
        assert_eq!(plan.weight_bits("conv1"), None);
        assert_eq!(plan.weight_bits("fc"), None);
        assert_eq!(plan.act_bits("layer1.0.pre_relu"), None);
        assert_eq!(plan.act_bits("final_relu"), None);
        assert_eq!(plan.weight_bits("layer1.0.conv1"), Some(4));
        assert_eq!(plan.act_bits("layer1.1.pre_relu"), Some(4));
        let base = BitsPlan::for_spec(&JobSpec::default()).unwrap();
        assert_eq!(base.weight_bits("layer1.0.conv1"), None);
    }

    #[test]
    fn dual_path_defaults_and_job_overrides_come_first() {
        let spec = JobSpec {
            stage: Stage::Sp,
            bits_overrides: vec![BitsOverride { pattern: "layer3.*.gate.*".into(), wts: Some(8), acts: None }],
            ..JobSpec::default()
        };
        let plan = BitsPlan::for_spec(&spec).unwrap();
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
        let err = BitsPlan::for_spec(&spec).unwrap().check_patterns(&paths).unwrap_err();
        assert_eq!(err.field, "bits_overrides");
        assert!(err.reason.contains("layer9.*"));
    }
}
