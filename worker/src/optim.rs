//! SGD with momentum and weight decay, computing what PyTorch's `torch.optim.SGD`
//! computes with dampening 0 and Nesterov off:
//! `d = g + wd*p; buf = d (first step) or momentum*buf + d; p -= lr*buf`.
//!
//! Written here (not tch's optimizer) so that the momentum can be checkpointed.
//! Gradients come from `run_backward` (no `.grad` to zero), and the update runs
//! on all parameters at once, concatenated: a handful of large kernels instead
//! of several small ones per parameter, which bounds small-batch GPU training.

use std::collections::BTreeMap;

use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{EngineError, Result};

pub struct Sgd {
    /// Trainable parameters by VarStore path, in name order.
    params: Vec<(String, Tensor)>,
    /// Every parameter's momentum back to back (each in row-major order);
    /// created by the first step.
    momentum_buffer: Option<Tensor>,
    momentum: f64,
    weight_decay: f64,
    /// Per-element decay back to back, where some parameters decay at their own
    /// rate (PACT's clips); None when every parameter takes `weight_decay`.
    decay_by_element: Option<Tensor>,
}

impl Sgd {
    /// Optimises every trainable variable of `vs`.
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64) -> Self {
        let params: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect::<BTreeMap<_, _>>().into_iter().collect();
        Sgd { params, momentum_buffer: None, momentum, weight_decay, decay_by_element: None }
    }

    /// Gives the parameters whose path ends in `suffix` their own weight decay.
    pub fn with_decay_for(mut self, suffix: &str, weight_decay: f64) -> Result<Self> {
        if weight_decay == self.weight_decay || !self.params.iter().any(|(name, _)| name.ends_with(suffix)) {
            return Ok(self);
        }
        let rows = self
            .params
            .iter()
            .map(|(name, p)| {
                let wd = if name.ends_with(suffix) { weight_decay } else { self.weight_decay };
                Tensor::f_full([p.numel() as i64], wd, (p.kind(), p.device()))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.decay_by_element = Some(Tensor::f_cat(&rows, 0)?);
        Ok(self)
    }

    /// Back-propagates `loss` to the parameters and updates them with learning rate `lr`.
    pub fn step(&mut self, loss: &Tensor, lr: f64) -> Result<()> {
        let params: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        let grads = Tensor::f_run_backward(&[loss], &params, false, false)?;
        let _no_grad = tch::no_grad_guard();
        let flat = |ts: &[&Tensor]| -> Result<Tensor> {
            let rows = ts.iter().map(|t| t.f_reshape([-1])).collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(Tensor::f_cat(&rows, 0)?)
        };
        let mut d = flat(&grads.iter().collect::<Vec<_>>())?;
        match &self.decay_by_element {
            Some(decay) => d = d.f_add(&flat(&params)?.f_mul(decay)?)?,
            None if self.weight_decay != 0.0 => d = d.f_add(&flat(&params)?.f_mul_scalar(self.weight_decay)?)?,
            None => {}
        }
        let buf = match &mut self.momentum_buffer {
            Some(buf) => {
                let _ = buf.f_mul_scalar_(self.momentum)?.f_add_(&d)?;
                buf.shallow_clone()
            }
            // `d` is a fresh tensor (made by cat), safe to keep as the buffer.
            None => self.momentum_buffer.insert(d).shallow_clone(),
        };
        let update = buf.f_mul_scalar(lr)?;
        let mut offset = 0;
        for (_, p) in &mut self.params {
            let numel = p.numel() as i64;
            let _ = p.f_sub_(&update.f_narrow(0, offset, numel)?.f_view(p.size().as_slice())?)?;
            offset += numel;
        }
        Ok(())
    }

    /// Each parameter's momentum buffer (views into the flat buffer); empty before the first step.
    pub fn momentum_buffers(&self) -> Result<Vec<(&str, Tensor)>> {
        let Some(buf) = &self.momentum_buffer else { return Ok(Vec::new()) };
        let mut offset = 0;
        let mut out = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let numel = p.numel() as i64;
            out.push((name.as_str(), buf.f_narrow(0, offset, numel)?.f_view(p.size().as_slice())?));
            offset += numel;
        }
        Ok(out)
    }

    /// Restores buffers saved from `momentum_buffers`: one per parameter, or
    /// none at all (a run that has not stepped yet).
    pub fn set_momentum_buffers(&mut self, buffers: &BTreeMap<String, Tensor>) -> Result<()> {
        if buffers.is_empty() {
            self.momentum_buffer = None;
            return Ok(());
        }
        if let Some(name) = buffers.keys().find(|name| !self.params.iter().any(|(n, _)| n == *name)) {
            return Err(EngineError::Checkpoint(format!("momentum buffer for unknown parameter '{name}'")));
        }
        let mut rows = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let saved = buffers.get(name).ok_or_else(|| EngineError::Checkpoint(format!("no momentum buffer for '{name}'")))?;
            if saved.size() != p.size() {
                return Err(EngineError::Checkpoint(format!(
                    "momentum buffer '{name}' has shape {:?}, the parameter has {:?}",
                    saved.size(),
                    p.size()
                )));
            }
            rows.push(saved.f_to_kind(p.kind())?.f_reshape([-1])?);
        }
        let device = self.params.first().map(|(_, p)| p.device()).unwrap_or(tch::Device::Cpu);
        // cat makes a new tensor: the buffer never aliases `buffers`.
        self.momentum_buffer = Some(Tensor::f_cat(&rows, 0)?.f_to_device(device)?);
        Ok(())
    }
}
