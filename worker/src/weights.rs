//! The convolution weights of a network, quantised together once per forward
//! pass. Quantised training on a GPU is bound by kernel launches (GPU.md):
//! quantising each conv's weight on its own costs a handful of small kernels
//! per conv, forward and backward. The bank concatenates all weights of one
//! quantiser, quantises them in one pass (`WeightQuantizer::quantize_segments`)
//! and hands each conv a view of its piece.

use tch::Tensor;

use crate::compute::ComputeOptions;
use crate::error::Result;
use crate::flat::{self, MemoryOrder};
use crate::quant::{Segments, WeightQuantizer};

/// A conv weight and its shape and layout.
struct ConvWeight {
    tensor: Tensor,
    order: MemoryOrder,
}

/// Collects the convolution weights while a network is built; `build` makes the bank.
#[derive(Default)]
pub struct WeightBankBuilder {
    slots: Vec<(ConvWeight, WeightQuantizer)>,
}

impl WeightBankBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The slot of a conv weight quantised by `quantizer`. A weight already
    /// added with the same quantiser (one parameter shared by two convs) gets
    /// its existing slot, so it is quantised once per step.
    pub fn add(&mut self, weight: &Tensor, quantizer: WeightQuantizer) -> Result<usize> {
        let order = MemoryOrder::of(weight)?;
        let same = |(w, q): &(ConvWeight, WeightQuantizer)| *q == quantizer && w.tensor.data_ptr() == weight.data_ptr();
        if let Some(slot) = self.slots.iter().position(same) {
            return Ok(slot);
        }
        self.slots.push((ConvWeight { tensor: weight.shallow_clone(), order }, quantizer));
        Ok(self.slots.len() - 1)
    }

    /// The bank, its per-group constants made on the weights' device.
    pub fn build(self) -> Result<WeightBank> {
        // Groups in the order their quantiser first appears.
        let mut members: Vec<(WeightQuantizer, Vec<ConvWeight>)> = Vec::new();
        let mut places = Vec::with_capacity(self.slots.len());
        for (weight, quantizer) in self.slots {
            let group = match members.iter().position(|(q, _)| *q == quantizer) {
                Some(group) => group,
                None => {
                    members.push((quantizer, Vec::new()));
                    members.len() - 1
                }
            };
            places.push((group, members[group].1.len()));
            members[group].1.push(weight);
        }
        let groups = members.into_iter().map(|(quantizer, weights)| QuantGroup::new(quantizer, weights)).collect::<Result<_>>()?;
        Ok(WeightBank { places, groups })
    }
}

/// Every conv weight of a network by slot, grouped by quantiser.
pub struct WeightBank {
    /// Each slot's (group, index in the group).
    places: Vec<(usize, usize)>,
    groups: Vec<QuantGroup>,
}

impl WeightBank {
    /// The compute-ready weight of every slot (quantised, cast to bf16 where
    /// `opts` says), differentiable back to the float weights.
    pub fn quantize(&self, opts: ComputeOptions) -> Result<Vec<Tensor>> {
        let per_group = self.groups.iter().map(|g| g.quantize(opts)).collect::<Result<Vec<_>>>()?;
        Ok(self.places.iter().map(|&(g, i)| per_group[g][i].shallow_clone()).collect())
    }

    /// The quantiser of a slot.
    pub fn quantizer(&self, slot: usize) -> WeightQuantizer {
        self.groups[self.places[slot].0].quantizer
    }
}

/// The weights of one quantiser.
struct QuantGroup {
    quantizer: WeightQuantizer,
    weights: Vec<Tensor>,
    /// Each weight's shape and layout.
    orders: Vec<MemoryOrder>,
    /// The weights' sizes on their device.
    segments: Segments,
}

impl QuantGroup {
    /// A group of at least one weight.
    fn new(quantizer: WeightQuantizer, weights: Vec<ConvWeight>) -> Result<Self> {
        let (weights, orders): (Vec<Tensor>, Vec<MemoryOrder>) = weights.into_iter().map(|w| (w.tensor, w.order)).unzip();
        let sizes: Vec<i64> = orders.iter().map(MemoryOrder::numel).collect();
        let segments = Segments::new(&sizes, weights[0].device())?;
        Ok(QuantGroup { quantizer, weights, orders, segments })
    }

    fn quantize(&self, opts: ComputeOptions) -> Result<Vec<Tensor>> {
        if self.quantizer == WeightQuantizer::Full && !opts.bf16 {
            return Ok(self.weights.iter().map(Tensor::shallow_clone).collect());
        }
        let flat = flat::concat(&self.weights.iter().collect::<Vec<_>>(), &self.orders)?;
        // One cast for the whole group rather than one per conv.
        let quantized = opts.compute_weight(self.quantizer.quantize_segments(&flat, &self.segments)?)?;
        flat::split(&quantized, &self.orders)
    }
}
