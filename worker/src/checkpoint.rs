//! Checkpoints as safetensors files: every VarStore tensor under its path
//! (weights and BN running statistics), the optimiser's momentum buffers under
//! `optim.momentum.<parameter>`, and in `__metadata__` everything else an exact
//! resume needs (position in the run, best result so far, the spec, the
//! running totals of a partly done epoch, and the resolved bit width of every
//! layer, so that loading rebuilds the very quantised network that was trained).

use std::collections::{BTreeMap, HashMap};

use camp_proto::spec::JobSpec;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::compute::ComputeOptions;
use crate::error::{EngineError, Result};
use crate::network::Network;
use crate::optim::Sgd;
use crate::precision::Precision;

pub const FORMAT: &str = "camp-checkpoint";
pub const FORMAT_VERSION: u32 = 1;
/// The network's graph, as its weights were trained for. Version 1 (no stamp)
/// pooled the pre-activation in the stage-transition shortcut; version 2 pools
/// the block's raw input, as the reference does (docs/method.md, "Network").
/// A checkpoint of another version is refused: its weights were trained for
/// another function and must not be evaluated or continued silently.
pub const MODEL_VERSION: u32 = 2;
pub const MOMENTUM_PREFIX: &str = "optim.momentum.";

/// Training totals of the epoch in progress, for exact epoch metrics after a resume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EpochTotals {
    /// Sum over the epoch's images of the per-image loss.
    pub loss_sum: f64,
    pub correct: i64,
    pub seen: i64,
}

/// Where a run stands, as stored in a checkpoint's metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointMeta {
    /// Epochs completed.
    pub epoch: u32,
    /// Optimiser steps taken since the start of the run.
    pub step: i64,
    /// Steps already taken in epoch `epoch + 1`; 0 at an epoch boundary.
    pub step_in_epoch: i64,
    /// Best test top-1 so far (NaN before the first evaluation) and its epoch (0 = none).
    pub best_top1: f64,
    pub best_epoch: u32,
    pub seed: u64,
    pub spec: JobSpec,
    /// Totals of epoch `epoch + 1` so far (zero at an epoch boundary).
    pub partial_epoch: EpochTotals,
    /// Bits of every layer of the network.
    pub precision: Precision,
}

impl CheckpointMeta {
    fn to_map(&self) -> Result<BTreeMap<String, String>> {
        let spec = serde_json::to_string(&self.spec).map_err(|e| EngineError::Checkpoint(format!("spec to JSON: {e}")))?;
        // f64 Display prints the shortest text that parses back to the same bits.
        Ok([
            ("format", FORMAT.to_string()),
            ("format_version", FORMAT_VERSION.to_string()),
            ("model_version", MODEL_VERSION.to_string()),
            ("epoch", self.epoch.to_string()),
            ("step", self.step.to_string()),
            ("step_in_epoch", self.step_in_epoch.to_string()),
            ("best_top1", self.best_top1.to_string()),
            ("best_epoch", self.best_epoch.to_string()),
            ("seed", self.seed.to_string()),
            ("spec", spec),
            ("train_loss_sum", self.partial_epoch.loss_sum.to_string()),
            ("train_correct", self.partial_epoch.correct.to_string()),
            ("train_seen", self.partial_epoch.seen.to_string()),
            ("precision", self.precision.to_json()?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect())
    }

    fn from_map(map: &HashMap<String, String>) -> Result<Self> {
        fn field<T: std::str::FromStr>(map: &HashMap<String, String>, key: &str) -> Result<T> {
            let text = map.get(key).ok_or_else(|| EngineError::Checkpoint(format!("metadata lacks '{key}'")))?;
            text.parse().map_err(|_| EngineError::Checkpoint(format!("metadata '{key}' = '{text}' does not parse")))
        }
        let format: String = field(map, "format")?;
        let version: u32 = field(map, "format_version")?;
        if format != FORMAT || version != FORMAT_VERSION {
            return Err(EngineError::Checkpoint(format!(
                "format {format} version {version}, this worker reads {FORMAT} version {FORMAT_VERSION}"
            )));
        }
        let model_version: u32 = if map.contains_key("model_version") { field(map, "model_version")? } else { 1 };
        if model_version != MODEL_VERSION {
            return Err(EngineError::Checkpoint(format!(
                "written for model version {model_version}, this worker builds version {MODEL_VERSION}: {}; retrain from scratch \
                 (or from a checkpoint of version {MODEL_VERSION})",
                if model_version < MODEL_VERSION {
                    "before version 2 the shortcut at each stage transition pooled the pre-activation, not the block's input, \
                     so these weights were trained for another network"
                } else {
                    "a newer worker wrote it"
                }
            )));
        }
        let spec_json: String = field(map, "spec")?;
        let spec: JobSpec = serde_json::from_str(&spec_json).map_err(|e| EngineError::Checkpoint(format!("metadata 'spec': {e}")))?;
        // Checkpoints from before quantisation hold full-precision baselines: their spec says so.
        let precision = match map.get("precision") {
            Some(text) => Precision::from_json(text)?,
            None => Precision::for_spec(&spec)?,
        };
        Ok(CheckpointMeta {
            epoch: field(map, "epoch")?,
            step: field(map, "step")?,
            step_in_epoch: field(map, "step_in_epoch")?,
            best_top1: field(map, "best_top1")?,
            best_epoch: field(map, "best_epoch")?,
            seed: field(map, "seed")?,
            spec,
            partial_epoch: EpochTotals {
                loss_sum: field(map, "train_loss_sum")?,
                correct: field(map, "train_correct")?,
                seen: field(map, "train_seen")?,
            },
            precision,
        })
    }

    /// The metadata as a JSON object of strings (as stored in the file).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(&self.to_map()?).map_err(|e| EngineError::Checkpoint(e.to_string()))
    }
}

/// A checkpoint read back, tensors on the CPU.
pub struct TrainState {
    pub meta: CheckpointMeta,
    /// VarStore tensors by path.
    pub model: BTreeMap<String, Tensor>,
    /// Momentum buffers by parameter path.
    pub momentum: BTreeMap<String, Tensor>,
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Uint8 => Dtype::U8,
        other => return Err(EngineError::Checkpoint(format!("cannot store tensors of kind {other:?}"))),
    })
}

fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::U8 => Kind::Uint8,
        other => return Err(EngineError::Checkpoint(format!("unsupported dtype {other:?}"))),
    })
}

/// A tensor as stored: dtype, shape and bytes in row-major order.
type StoredTensor = (Dtype, Vec<usize>, Vec<u8>);

fn tensor_bytes(t: &Tensor) -> Result<StoredTensor> {
    let cpu = t.f_to_device(Device::Cpu)?.f_contiguous()?;
    let numel = cpu.numel();
    let mut bytes = vec![0u8; numel * cpu.f_kind()?.elt_size_in_bytes()];
    cpu.f_copy_data_u8(&mut bytes, numel)?;
    Ok((dtype_of(cpu.f_kind()?)?, cpu.size().iter().map(|&d| d as usize).collect(), bytes))
}

/// Serialises the model's variables, the optimiser's momentum and `meta`.
///
/// The file is a function of the state alone: identical state gives identical
/// bytes (and sha256) in any process. safetensors orders the tensors (by dtype,
/// then name) but writes `__metadata__` from a `HashMap`, whose order is random
/// per process; so the tensors are serialised without it and the metadata,
/// with its keys sorted, is put into the header here (`with_sorted_metadata`).
pub fn save(vs: &VarStore, sgd: &Sgd, meta: &CheckpointMeta) -> Result<Vec<u8>> {
    let mut entries: Vec<(String, StoredTensor)> = Vec::new();
    for (name, t) in vs.variables() {
        entries.push((name, tensor_bytes(&t)?));
    }
    for (name, buf) in sgd.momentum_buffers()? {
        entries.push((format!("{MOMENTUM_PREFIX}{name}"), tensor_bytes(&buf)?));
    }
    let views = entries
        .iter()
        .map(|(name, (dtype, shape, bytes))| TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.as_str(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| EngineError::Checkpoint(e.to_string()))?;
    let tensors_only = safetensors::serialize(views, None).map_err(|e| EngineError::Checkpoint(e.to_string()))?;
    with_sorted_metadata(&tensors_only, &meta.to_map()?)
}

/// Header lengths are a little-endian u64; the header is JSON padded with
/// spaces to a multiple of this, and the tensors' bytes follow it.
const HEADER_LEN_BYTES: usize = 8;
const HEADER_ALIGN: usize = 8;

/// `file` (a safetensors file without metadata) with `metadata` as its
/// `__metadata__`, the header's first entry, keys in sorted order. The
/// tensors' offsets count from the end of the header, so they stand.
fn with_sorted_metadata(file: &[u8], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let bad = |why: &str| EngineError::Checkpoint(format!("serialising: {why}"));
    let len_bytes: [u8; HEADER_LEN_BYTES] = file.get(..HEADER_LEN_BYTES).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("no header"))?;
    let header_len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| bad("header length"))?;
    let header_end = HEADER_LEN_BYTES.checked_add(header_len).filter(|&end| end <= file.len()).ok_or_else(|| bad("header length"))?;
    let header = std::str::from_utf8(&file[HEADER_LEN_BYTES..header_end]).map_err(|_| bad("header is not UTF-8"))?.trim_end();
    let tensors = header.strip_prefix('{').and_then(|h| h.strip_suffix('}')).ok_or_else(|| bad("header is not a JSON object"))?;
    let metadata = serde_json::to_string(metadata).map_err(|e| bad(&e.to_string()))?;
    let mut new_header = format!("{{\"__metadata__\":{metadata}");
    if !tensors.is_empty() {
        new_header.push(',');
        new_header.push_str(tensors);
    }
    new_header.push('}');
    let padded = new_header.len().next_multiple_of(HEADER_ALIGN);
    let mut out = Vec::with_capacity(HEADER_LEN_BYTES + padded + file.len() - header_end);
    out.extend_from_slice(&(padded as u64).to_le_bytes());
    out.extend_from_slice(new_header.as_bytes());
    out.resize(HEADER_LEN_BYTES + padded, b' ');
    out.extend_from_slice(&file[header_end..]);
    Ok(out)
}

/// Reads only the metadata of a checkpoint.
pub fn read_meta(bytes: &[u8]) -> Result<CheckpointMeta> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| EngineError::Checkpoint(e.to_string()))?;
    let map = metadata.metadata().clone().ok_or_else(|| EngineError::Checkpoint("no __metadata__".into()))?;
    CheckpointMeta::from_map(&map)
}

/// Reads a whole checkpoint; tensors land on the CPU.
pub fn load(bytes: &[u8]) -> Result<TrainState> {
    let meta = read_meta(bytes)?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| EngineError::Checkpoint(e.to_string()))?;
    let mut model = BTreeMap::new();
    let mut momentum = BTreeMap::new();
    for (name, view) in file.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind_of(view.dtype())?)?;
        match name.strip_prefix(MOMENTUM_PREFIX) {
            Some(param) => momentum.insert(param.to_string(), t),
            None => model.insert(name, t),
        };
    }
    Ok(TrainState { meta, model, momentum })
}

/// Copies `tensors` into the variables of `vs`. Every variable must be
/// present with its shape, and no tensor may be left over.
pub fn load_weights(vs: &VarStore, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let variables = vs.variables();
    if let Some(extra) = tensors.keys().find(|k| !variables.contains_key(*k)) {
        return Err(EngineError::Checkpoint(format!("tensor '{extra}' matches no variable of the model")));
    }
    let _no_grad = tch::no_grad_guard();
    for (name, mut var) in variables {
        let saved = tensors.get(&name).ok_or_else(|| EngineError::Checkpoint(format!("missing tensor '{name}'")))?;
        if saved.size() != var.size() {
            return Err(EngineError::Checkpoint(format!("tensor '{name}' has shape {:?}, the model's has {:?}", saved.size(), var.size())));
        }
        var.f_copy_(saved)?;
    }
    Ok(())
}

/// Copies into `vs` every tensor of `tensors` that one of its variables
/// takes: the variable's own name, or the name `source_name` gives it (e.g. a
/// dual-path block's basic path reading the plain block it was trained as).
/// Returns the names of the variables loaded; a name that matches with
/// another shape is an error.
pub fn load_matching(
    vs: &VarStore,
    tensors: &BTreeMap<String, Tensor>,
    source_name: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>> {
    let _no_grad = tch::no_grad_guard();
    let mut loaded = Vec::new();
    for (name, mut var) in vs.variables() {
        let Some(saved) = tensors.get(&name).or_else(|| source_name(&name).and_then(|src| tensors.get(&src))) else {
            continue;
        };
        if saved.size() != var.size() {
            return Err(EngineError::Checkpoint(format!(
                "initialising '{name}': the checkpoint's tensor has shape {:?}, the model's {:?}",
                saved.size(),
                var.size()
            )));
        }
        var.f_copy_(saved)?;
        loaded.push(name);
    }
    Ok(loaded)
}

/// Checks that `bytes` is a checkpoint this worker can resume from: reads it,
/// rebuilds its network (with the stored bits of every layer) on the CPU and
/// loads every tensor into it.
pub fn verify(bytes: &[u8]) -> Result<CheckpointMeta> {
    let state = load(bytes)?;
    let spec = &state.meta.spec;
    let info =
        crate::data::dataset_info(&spec.dataset).ok_or_else(|| EngineError::Checkpoint(format!("unknown data set '{}'", spec.dataset)))?;
    let vs = VarStore::new(Device::Cpu);
    Network::build(&vs.root(), spec, &state.meta.precision, info.channels, info.classes, ComputeOptions::default())?;
    load_weights(&vs, &state.model)?;
    let mut sgd = Sgd::new(&vs, spec.momentum, spec.weight_decay)?;
    sgd.set_momentum_buffers(&state.momentum)?;
    Ok(state.meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> CheckpointMeta {
        let spec = JobSpec::default();
        CheckpointMeta {
            epoch: 1,
            step: 10,
            step_in_epoch: 0,
            best_top1: 0.5,
            best_epoch: 1,
            seed: 1,
            precision: Precision::for_spec(&spec).unwrap(),
            spec,
            partial_epoch: EpochTotals::default(),
        }
    }

    /// A small model and optimiser whose state is the same in every process:
    /// fixed values, and momentum buffers after one step of fixed gradients.
    fn fixed_state() -> (VarStore, Sgd) {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let w = (&root / "conv").var_copy("weight", &Tensor::arange(24, (Kind::Float, Device::Cpu)).reshape([2, 3, 2, 2]));
        let b = (&root / "bn").var_copy("bias", &Tensor::from_slice(&[0.5f32, -1.5]));
        let _ = (&root / "bn").var_copy("running_mean", &Tensor::from_slice(&[0.25f32, 0.75])).set_requires_grad(false);
        let mut sgd = Sgd::new(&vs, 0.9, 5e-4).unwrap();
        let loss = (&w * &w).sum(Kind::Float) + b.sum(Kind::Float);
        sgd.step(&loss, 0.1).unwrap();
        (vs, sgd)
    }

    #[test]
    fn checkpoints_of_identical_state_are_byte_identical() {
        let (vs, sgd) = fixed_state();
        let first = save(&vs, &sgd, &meta()).unwrap();
        // Each save builds its maps afresh (a new random hash order each time):
        // any order left to a HashMap would show within a few saves.
        for _ in 0..16 {
            assert!(save(&vs, &sgd, &meta()).unwrap() == first, "two saves of one state differ");
        }
        let (vs2, sgd2) = fixed_state();
        assert!(save(&vs2, &sgd2, &meta()).unwrap() == first, "a second model of the same state saves differently");
        // And it is a safetensors file that reads back whole.
        let state = load(&first).unwrap();
        assert_eq!(state.meta, meta());
        assert_eq!(state.model.keys().collect::<Vec<_>>(), ["bn.bias", "bn.running_mean", "conv.weight"]);
        assert_eq!(state.momentum.len(), 2, "{:?}", state.momentum.keys());
        let header_len = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0, "the header keeps its 8-byte alignment");
        assert!(first[8..].starts_with(b"{\"__metadata__\":{\"best_epoch\":"), "metadata first, keys sorted");
    }

    /// With CAMP_CHECKPOINT_DIGEST_OUT set, writes the fixed state's file
    /// there: the other process of `checkpoints_are_byte_identical_across_processes`.
    #[test]
    fn fixed_state_checkpoint_for_another_process() {
        if let Some(path) = std::env::var_os("CAMP_CHECKPOINT_DIGEST_OUT") {
            let (vs, sgd) = fixed_state();
            std::fs::write(path, save(&vs, &sgd, &meta()).unwrap()).unwrap();
        }
    }

    #[test]
    fn checkpoints_are_byte_identical_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for i in 0..2 {
            let path = dir.path().join(format!("{i}.safetensors"));
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "checkpoint::tests::fixed_state_checkpoint_for_another_process", "--test-threads", "1"])
                .env("CAMP_CHECKPOINT_DIGEST_OUT", &path)
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            files.push(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (the other process wrote nothing)", path.display())));
        }
        let (vs, sgd) = fixed_state();
        let here = save(&vs, &sgd, &meta()).unwrap();
        assert!(files[0] == files[1] && files[0] == here, "the same state saved in three processes differs");
    }

    #[test]
    fn metadata_is_stamped_with_the_model_version_and_reads_back() {
        let map: HashMap<String, String> = meta().to_map().unwrap().into_iter().collect();
        assert_eq!(map["model_version"], MODEL_VERSION.to_string());
        assert_eq!(CheckpointMeta::from_map(&map).unwrap(), meta());
    }

    #[test]
    fn a_checkpoint_of_the_old_shortcut_or_a_newer_model_is_refused_with_the_reason() {
        let mut map: HashMap<String, String> = meta().to_map().unwrap().into_iter().collect();
        map.remove("model_version");
        let err = CheckpointMeta::from_map(&map).unwrap_err().to_string();
        assert!(err.contains("model version 1") && err.contains("pooled the pre-activation"), "{err}");
        map.insert("model_version".into(), (MODEL_VERSION + 1).to_string());
        let err = CheckpointMeta::from_map(&map).unwrap_err().to_string();
        assert!(err.contains("a newer worker wrote it"), "{err}");
    }
}
