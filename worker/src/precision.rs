//! The resolved bit widths of one network: every conv/linear weight and every
//! ReLU by module path, as the job's bits plan (docs/method.md, "Quantisation") assigns them.
//! Checkpoints store this table, so a loaded checkpoint rebuilds exactly the
//! quantised network that was trained, whatever later defaults say.

use std::collections::BTreeMap;

use camp_proto::arch;
use camp_proto::energy::input_shape;
use camp_proto::quant::BitsPlan;
use camp_proto::spec::{ActQuant, JobSpec};
use serde::{Deserialize, Serialize};
use tch::nn::Path;

use crate::error::{EngineError, Result};
use crate::quant::{Activation, WeightQuantizer, FULL_PRECISION_BITS};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precision {
    pub act_quant: ActQuant,
    /// Weight bits of every conv and linear layer (32 = full precision).
    pub weights: BTreeMap<String, u32>,
    /// Activation bits of every ReLU (32 = a plain ReLU).
    pub activations: BTreeMap<String, u32>,
}

impl Precision {
    /// The table for the network `spec` trains: its base architecture, or the
    /// dual-path variant for stages sp and rl. A job's override pattern that
    /// matches no module is an error.
    pub fn for_spec(spec: &JobSpec) -> Result<Self> {
        let (in_ch, classes, hw) = input_shape(&spec.dataset)?;
        let dual_path = spec.stage.is_dual_path();
        let layers = arch::layers(&spec.arch, dual_path, in_ch, classes, hw)?;
        let relus = arch::relu_paths(&spec.arch, dual_path, hw)?;
        let mut module_paths: Vec<String> = layers.iter().map(|l| l.path.clone()).collect();
        module_paths.extend(relus.iter().cloned());
        let plan = BitsPlan::for_spec(spec)?;
        plan.check_patterns(&module_paths)?;
        let bits = |b: Option<u32>| b.unwrap_or(FULL_PRECISION_BITS);
        Ok(Precision {
            act_quant: spec.act_quant,
            weights: layers.into_iter().map(|l| (l.path.clone(), bits(plan.weight_bits(&l.path)))).collect(),
            activations: relus.into_iter().map(|path| (path.clone(), bits(plan.act_bits(&path)))).collect(),
        })
    }

    /// The quantiser of the conv or linear weight at `path`.
    pub fn weight_quantizer(&self, path: &str) -> Result<WeightQuantizer> {
        let bits = self.weights.get(path).ok_or_else(|| unknown("weight layer", path))?;
        WeightQuantizer::for_bits(Some(*bits))
    }

    /// The activation of the ReLU at `p` (its module path is `p`'s).
    pub fn activation(&self, p: Path) -> Result<Activation> {
        let path = crate::module_path::path_of(&p);
        let bits = self.activations.get(&path).ok_or_else(|| unknown("ReLU", &path))?;
        Activation::new(p, Some(*bits), self.act_quant)
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| EngineError::Checkpoint(format!("precision to JSON: {e}")))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| EngineError::Checkpoint(format!("metadata 'precision': {e}")))
    }
}

/// The model has a module the table does not know: the model's paths and
/// `camp_proto::arch`'s have drifted apart.
fn unknown(what: &str, path: &str) -> EngineError {
    EngineError::Model(format!("{what} '{path}' is not in the architecture's layer list"))
}
