//! SGD with momentum and weight decay, computing what PyTorch's `torch.optim.SGD`
//! computes with dampening 0 and Nesterov off:
//! `d = g + wd*p; buf = d (first step) or momentum*buf + d; p -= lr*buf`.
//! Written here (not tch's optimizer) so that the momentum buffers can be
//! checkpointed and restored.

use std::collections::BTreeMap;

use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{EngineError, Result};

pub struct Sgd {
    /// Trainable parameters by VarStore path, in name order.
    params: Vec<(String, Tensor)>,
    /// One buffer per parameter, created on its first update.
    momentum_buffers: Vec<Option<Tensor>>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// Optimises every trainable variable of `vs`.
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64) -> Self {
        let params: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect::<BTreeMap<_, _>>().into_iter().collect();
        let momentum_buffers = params.iter().map(|_| None).collect();
        Sgd { params, momentum_buffers, momentum, weight_decay }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr`; parameters without a gradient are skipped.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        for ((_, p), buf) in self.params.iter_mut().zip(self.momentum_buffers.iter_mut()) {
            let grad = p.f_grad()?;
            if !grad.defined() {
                continue;
            }
            let d = if self.weight_decay != 0.0 { grad.f_add(&p.f_mul_scalar(self.weight_decay)?)? } else { grad };
            let update = match buf {
                Some(b) => {
                    let _ = b.f_mul_scalar_(self.momentum)?.f_add_(&d)?;
                    b.shallow_clone()
                }
                None => {
                    // A copy: `d` may be the gradient itself, which zero_grad clears.
                    let mut b = d.f_empty_like()?;
                    b.f_copy_(&d)?;
                    *buf = Some(b.shallow_clone());
                    b
                }
            };
            let _ = p.f_sub_(&update.f_mul_scalar(lr)?)?;
        }
        Ok(())
    }

    /// The momentum buffers that exist, by parameter name.
    pub fn momentum_buffers(&self) -> Vec<(&str, &Tensor)> {
        self.params
            .iter()
            .zip(&self.momentum_buffers)
            .filter_map(|((name, _), buf)| buf.as_ref().map(|b| (name.as_str(), b)))
            .collect()
    }

    /// Restores buffers saved by `momentum_buffers`, copying them onto each
    /// parameter's device. Unknown names or wrong shapes are an error.
    pub fn set_momentum_buffers(&mut self, buffers: &BTreeMap<String, Tensor>) -> Result<()> {
        for name in buffers.keys() {
            if !self.params.iter().any(|(n, _)| n == name) {
                return Err(EngineError::Checkpoint(format!("momentum buffer for unknown parameter '{name}'")));
            }
        }
        for ((name, p), buf) in self.params.iter().zip(self.momentum_buffers.iter_mut()) {
            *buf = match buffers.get(name) {
                Some(saved) if saved.size() == p.size() => {
                    // A fresh buffer in the parameter's layout, never an alias of `saved`.
                    let mut b = p.f_empty_like()?;
                    b.f_copy_(saved)?;
                    Some(b)
                }
                Some(saved) => {
                    return Err(EngineError::Checkpoint(format!(
                        "momentum buffer '{name}' has shape {:?}, parameter has {:?}",
                        saved.size(),
                        p.size()
                    )))
                }
                None => None,
            };
        }
        Ok(())
    }
}
