//! Tensors laid end to end in one flat buffer, each in its own memory order, so
//! that going between a tensor and its piece of the buffer is a view, not a
//! copy (a channels-last conv weight (O, I, kh, kw) is contiguous as (O, kh, kw, I)).
//!
//! Training on a GPU is bound by the host's per-op cost (GPU.md): the optimiser
//! and the weight bank work on such flat buffers, a few large ops per step
//! instead of a few per tensor.

use tch::Tensor;

use crate::error::{EngineError, Result};

/// The shape of a dense tensor and the order of its dimensions in memory.
#[derive(Debug, Clone)]
pub struct MemoryOrder {
    shape: Vec<i64>,
    /// Dimensions from outermost to innermost in memory.
    order: Vec<i64>,
}

impl MemoryOrder {
    /// The memory order of `t`, which must be dense (no gaps, no overlaps).
    pub fn of(t: &Tensor) -> Result<Self> {
        let (shape, strides) = (t.size(), t.stride());
        let mut dims: Vec<usize> = (0..shape.len()).collect();
        // Stable: dimensions of equal stride (size 1) keep their logical order.
        dims.sort_by(|&a, &b| strides[b].cmp(&strides[a]));
        let order: Vec<i64> = dims.into_iter().map(|d| d as i64).collect();
        if !t.f_permute(order.as_slice())?.is_contiguous() {
            return Err(EngineError::Model(format!("a tensor of shape {shape:?} and strides {strides:?} is not dense")));
        }
        Ok(MemoryOrder { shape, order })
    }

    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }

    fn is_logical(&self) -> bool {
        self.order.iter().enumerate().all(|(i, &d)| i as i64 == d)
    }

    /// `t` (of this shape) as one dimension in this memory order: a view where
    /// `t` is laid out so, a copy otherwise.
    pub fn flatten(&self, t: &Tensor) -> Result<Tensor> {
        let ordered = if self.is_logical() { t.shallow_clone() } else { t.f_permute(self.order.as_slice())? };
        Ok(ordered.f_reshape([-1])?)
    }

    /// The inverse of `flatten`: a view of `flat` (`numel` elements) in this
    /// shape and layout.
    pub fn unflatten(&self, flat: &Tensor) -> Result<Tensor> {
        if self.is_logical() {
            return Ok(flat.f_view(self.shape.as_slice())?);
        }
        let in_memory: Vec<i64> = self.order.iter().map(|&d| self.shape[d as usize]).collect();
        let mut inverse = vec![0i64; self.order.len()];
        for (position, &d) in self.order.iter().enumerate() {
            inverse[d as usize] = position as i64;
        }
        Ok(flat.f_view(in_memory.as_slice())?.f_permute(inverse.as_slice())?)
    }
}

/// Each of `tensors` flattened in its `orders` entry's memory order, end to end.
pub fn concat(tensors: &[&Tensor], orders: &[MemoryOrder]) -> Result<Tensor> {
    let rows = tensors.iter().zip(orders).map(|(t, order)| order.flatten(t)).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::f_cat(&rows, 0)?)
}

/// The inverse of `concat`: views of `flat`'s pieces in their tensors' shapes and layouts.
pub fn split(flat: &Tensor, orders: &[MemoryOrder]) -> Result<Vec<Tensor>> {
    let sizes: Vec<i64> = orders.iter().map(MemoryOrder::numel).collect();
    flat.f_split_with_sizes(&sizes, 0)?.iter().zip(orders).map(|(piece, order)| order.unflatten(piece)).collect()
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    #[test]
    fn a_channels_last_weight_flattens_and_comes_back_as_views() {
        let logical = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        let channels_last = logical.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        let plain = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
        let orders = [MemoryOrder::of(&channels_last).unwrap(), MemoryOrder::of(&plain).unwrap()];
        assert_eq!(orders[0].order, [0, 2, 3, 1]);

        let flat = concat(&[&channels_last, &plain], &orders).unwrap();
        assert_eq!(flat.size(), [48 + 30]);
        let pieces = split(&flat, &orders).unwrap();
        assert!(pieces[0].equal(&logical) && pieces[1].equal(&plain));
        assert_eq!(pieces[0].stride(), channels_last.stride(), "the piece keeps the channels-last layout");
        assert_eq!(pieces[0].data_ptr(), flat.data_ptr(), "a view, not a copy");
    }

    #[test]
    fn a_tensor_with_gaps_has_no_memory_order() {
        let t = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu));
        assert!(MemoryOrder::of(&t.slice(1, 0, 4, 2)).is_err());
    }
}
