//! Evaluation on the test set (docs/method.md, "Energy"): accuracy, loss and,
//! for a dual-path network, how images are routed, which sets the energy per
//! image. Every epoch ends with one; the job's result is the last.

use camp_proto::energy::EnergyReport;
use tch::{Device, Kind, Reduction, Tensor};

use crate::data::Dataset;
use crate::error::Result;
use crate::network::Network;

/// Test-set results of one evaluation.
#[derive(Debug, Clone)]
pub(crate) struct Evaluation {
    pub(crate) loss: f64,
    pub(crate) top1: f64,
    pub(crate) top5: f64,
    /// Blocks' energy per image (pJ) and normalised.
    pub(crate) energy_pj: f64,
    pub(crate) normalized_energy: f64,
    /// Dual path: per block, the share of test images routed to 4 bits (empty otherwise).
    pub(crate) block_shares: Vec<f64>,
}

impl Evaluation {
    /// Dual path: share of all (image, block) decisions that took 4 bits.
    pub(crate) fn fullbit_share(&self) -> Option<f64> {
        (!self.block_shares.is_empty()).then(|| self.block_shares.iter().sum::<f64>() / self.block_shares.len() as f64)
    }
}

/// Evaluates `network` on the whole test set in batches of `batch`: loss,
/// top-1, top-5, and for a dual-path network the share of images each block
/// routes to 4 bits, from which the energy per image follows.
pub(crate) fn evaluate(network: &Network, data: &Dataset, energy: &EnergyReport, batch: i64) -> Result<Evaluation> {
    let _no_grad = tch::no_grad_guard();
    let n = data.test_len();
    let device = data.device();
    let mut loss_sum = Tensor::f_zeros([1], (Kind::Double, device))?;
    let mut top1 = Tensor::f_zeros([1], (Kind::Int64, device))?;
    let mut top5 = Tensor::f_zeros([1], (Kind::Int64, device))?;
    let k = 5.min(data.info.classes);
    // Images routed to 4 bits, per block (dual path).
    let mut routed: Option<Tensor> = None;
    let mut start = 0;
    while start < n {
        let len = batch.min(n - start);
        let (images, labels) = data.test_batch(start, len)?;
        let forward = network.forward(&images, false)?;
        if !forward.gates.is_empty() {
            let masks: Vec<&Tensor> = forward.gates.iter().map(|g| &g.mask).collect();
            let per_block = Tensor::f_stack(&masks, 0)?.f_sum_dim_intlist(1, false, Kind::Double)?;
            routed = Some(match routed {
                Some(sum) => sum.f_add(&per_block)?,
                None => per_block,
            });
        }
        let logits = forward.logits;
        let loss = logits.f_cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0)?;
        let _ = loss_sum.f_add_(&loss.f_to_kind(Kind::Double)?)?;
        let (_, top_k) = logits.f_topk(k, 1, true, true)?;
        let hits = top_k.f_eq_tensor(&labels.f_unsqueeze(1)?)?;
        let _ = top1.f_add_(&hits.f_narrow(1, 0, 1)?.f_sum(Kind::Int64)?)?;
        let _ = top5.f_add_(&hits.f_sum(Kind::Int64)?)?;
        start += len;
    }
    let n = n as f64;
    let block_shares: Vec<f64> = match routed {
        Some(sum) => Vec::<f64>::try_from(sum.f_to_device(Device::Cpu)?.f_div_scalar(n)?)?,
        None => Vec::new(),
    };
    let energy_pj = energy.blocks_pj(&block_shares);
    Ok(Evaluation {
        loss: loss_sum.f_double_value(&[0])? / n,
        top1: top1.f_int64_value(&[0])? as f64 / n,
        top5: top5.f_int64_value(&[0])? as f64 / n,
        energy_pj,
        normalized_energy: energy.normalized(energy_pj),
        block_shares,
    })
}
