//! SGD with momentum and weight decay, computing what PyTorch's `torch.optim.SGD`
//! computes with dampening 0 and Nesterov off:
//! `d = g + wd*p; buf = d (first step) or momentum*buf + d; p -= lr*buf`.
//!
//! Written here (not tch's optimizer) so that the momentum can be checkpointed.
//! Training on a GPU is bound by the host's cost per op (GPU.md), so the
//! optimiser owns the parameters' memory: every trainable variable becomes a
//! view of one flat buffer (each in its own layout), and a step is a handful of
//! ops on that buffer whatever the number of parameters.

use std::collections::BTreeMap;

use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{EngineError, Result};
use crate::flat::{self, MemoryOrder};

pub struct Sgd {
    /// Trainable parameters by VarStore path, in name order.
    params: Vec<(String, Tensor)>,
    /// Each parameter's shape and layout, as laid out in the flat buffers.
    orders: Vec<MemoryOrder>,
    /// Every parameter's data, end to end: the parameters are views of it.
    flat_params: Tensor,
    /// Every parameter's momentum, laid out as `flat_params`; created by the first step.
    momentum_buffer: Option<Tensor>,
    momentum: f64,
    weight_decay: f64,
    /// Per-element decay laid out as `flat_params`, where some parameters decay
    /// at their own rate (PACT's clips); None when every parameter takes `weight_decay`.
    decay_by_element: Option<Tensor>,
}

impl Sgd {
    /// Optimises every trainable variable of `vs`, which from here on live in
    /// the optimiser's flat buffer (their values unchanged).
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64) -> Result<Self> {
        let params: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect::<BTreeMap<_, _>>().into_iter().collect();
        let orders = params.iter().map(|(_, p)| MemoryOrder::of(p)).collect::<Result<Vec<_>>>()?;
        let tensors: Vec<&Tensor> = params.iter().map(|(_, p)| p).collect();
        let flat_params = tch::no_grad(|| flat::concat(&tensors, &orders))?;
        for ((_, p), view) in params.iter().zip(flat::split(&flat_params, &orders)?) {
            p.shallow_clone().f_set_data(&view)?;
        }
        Ok(Sgd { params, orders, flat_params, momentum_buffer: None, momentum, weight_decay, decay_by_element: None })
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
        let gradient = self.gradient(loss)?;
        self.update(gradient, lr)
    }

    /// Back-propagates `loss` to the parameters: their gradient, laid out as
    /// the flat parameter buffer (a fresh tensor the caller owns). Data-parallel
    /// ranks sum these buffers with one all-reduce before [`Sgd::update`].
    pub fn gradient(&self, loss: &Tensor) -> Result<Tensor> {
        if self.params.first().is_some_and(|(_, p)| p.data_ptr() != self.flat_params.data_ptr()) {
            return Err(EngineError::Model(
                "the parameters no longer live in this optimiser's buffer (a second optimiser took them)".into(),
            ));
        }
        let params: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        let grads = Tensor::f_run_backward(&[loss], &params, false, false)?;
        let _no_grad = tch::no_grad_guard();
        flat::concat(&grads.iter().collect::<Vec<_>>(), &self.orders)
    }

    /// A gradient of zeros (a rank whose shard of a batch is empty).
    pub fn zero_gradient(&self) -> Result<Tensor> {
        Ok(self.flat_params.f_zeros_like()?)
    }

    /// Updates the parameters from `gradient` (from [`Sgd::gradient`], summed
    /// over ranks or not) with learning rate `lr`.
    pub fn update(&mut self, gradient: Tensor, lr: f64) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        let mut d = gradient;
        match &self.decay_by_element {
            Some(decay) => d = d.f_add(&self.flat_params.f_mul(decay)?)?,
            None if self.weight_decay != 0.0 => d = d.f_add(&self.flat_params.f_mul_scalar(self.weight_decay)?)?,
            None => {}
        }
        let buf = match &mut self.momentum_buffer {
            Some(buf) => {
                let _ = buf.f_mul_scalar_(self.momentum)?.f_add_(&d)?;
                buf.shallow_clone()
            }
            // `d` is a fresh tensor (made by cat, or by the caller), safe to keep as the buffer.
            None => self.momentum_buffer.insert(d).shallow_clone(),
        };
        let _ = self.flat_params.f_sub_(&buf.f_mul_scalar(lr)?)?;
        Ok(())
    }

    /// Every parameter end to end (the buffer the parameters are views of).
    pub fn flat_params(&self) -> &Tensor {
        &self.flat_params
    }

    /// Every momentum buffer end to end, laid out as [`Sgd::flat_params`]; None before the first step.
    pub fn flat_momentum(&self) -> Option<&Tensor> {
        self.momentum_buffer.as_ref()
    }

    /// Each parameter's momentum buffer (views into the flat buffer); empty before the first step.
    pub fn momentum_buffers(&self) -> Result<Vec<(&str, Tensor)>> {
        let Some(buf) = &self.momentum_buffer else { return Ok(Vec::new()) };
        let views = flat::split(buf, &self.orders)?;
        Ok(self.params.iter().map(|(name, _)| name.as_str()).zip(views).collect())
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
        let mut saved = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let buffer = buffers.get(name).ok_or_else(|| EngineError::Checkpoint(format!("no momentum buffer for '{name}'")))?;
            if buffer.size() != p.size() {
                return Err(EngineError::Checkpoint(format!(
                    "momentum buffer '{name}' has shape {:?}, the parameter has {:?}",
                    buffer.size(),
                    p.size()
                )));
            }
            saved.push(buffer.f_to_kind(p.kind())?.f_to_device(p.device())?);
        }
        // cat makes a new tensor: the buffer never aliases `buffers`.
        self.momentum_buffer = Some(flat::concat(&saved.iter().collect::<Vec<_>>(), &self.orders)?);
        Ok(())
    }
}
