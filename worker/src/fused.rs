//! The worker's own libtorch ops (`csrc/fused.cpp`), for what tch's ops would
//! compose from several kernels and autograd nodes each way: training on a GPU
//! is bound by the host's cost per op (GPU.md).

use std::ffi::{c_char, c_void};

use tch::Tensor;

use crate::csrc::take_error;
use crate::error::Result;

extern "C" {
    fn camp_dorefa_activation(x: *const c_void, levels: i64, error: *mut *mut c_char) -> *mut c_void;
    fn camp_dorefa_weights(
        flat: *const c_void,
        lengths: *const c_void,
        ids: *const c_void,
        levels: i64,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn camp_straight_through_gate_mix(
        logits: *const c_void,
        basic: *const c_void,
        fullbit: *const c_void,
        out: *mut *mut c_void,
        mask: *mut *mut c_void,
        error: *mut *mut c_char,
    ) -> bool;
}

/// DoReFa's activation `round_k(clamp(x, 0, 1))` with `levels` = 2^k - 1
/// steps, the gradient passed where `0 <= x <= 1` (docs/method.md, "Quantisation"): one kernel
/// forward (fake quantisation), one backward.
pub fn dorefa_activation(x: &Tensor, levels: i64) -> Result<Tensor> {
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `x` outlives the call; a non-null result is a new tensor that the
    // returned `Tensor` owns.
    unsafe {
        let out = camp_dorefa_activation(x.as_ptr().cast(), levels, &mut error);
        if out.is_null() {
            return Err(take_error(error, "dorefa_activation"));
        }
        Ok(Tensor::from_ptr(out.cast()))
    }
}

/// DoReFa's weight quantisation with `levels` = 2^k - 1 steps (docs/method.md, "Quantisation")
/// of the weights laid end to end in `flat`, segment by segment (`lengths`,
/// int64; `ids`: each element's segment), the max |tanh w| taken per weight:
/// one autograd op with a backward of parallel kernels only.
pub fn dorefa_weights(flat: &Tensor, lengths: &Tensor, ids: &Tensor, levels: i64) -> Result<Tensor> {
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: the inputs outlive the call; a non-null result is a new tensor
    // that the returned `Tensor` owns.
    unsafe {
        let out = camp_dorefa_weights(flat.as_ptr().cast(), lengths.as_ptr().cast(), ids.as_ptr().cast(), levels, &mut error);
        if out.is_null() {
            return Err(take_error(error, "dorefa_weights"));
        }
        Ok(Tensor::from_ptr(out.cast()))
    }
}

/// A dual-path block's output under its gate in stage sp (docs/method.md, "Stage sp"): per
/// image, the 4-bit path's output where `softmax(logits)[1] > 0.5`, the 1-bit
/// path's elsewhere, with the gradient of `(1 - m) * basic + m * fullbit` for
/// the straight-through mask `m = hard - p.detach() + p`. Returns the output
/// and the 0/1 mask (N,) in fp32, which takes no gradient.
pub fn straight_through_gate_mix(logits: &Tensor, basic: &Tensor, fullbit: &Tensor) -> Result<(Tensor, Tensor)> {
    let (mut out, mut mask, mut error) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: the inputs outlive the call; on success both results are new
    // tensors that the returned `Tensor`s own.
    unsafe {
        let ok = camp_straight_through_gate_mix(
            logits.as_ptr().cast(),
            basic.as_ptr().cast(),
            fullbit.as_ptr().cast(),
            &mut out,
            &mut mask,
            &mut error,
        );
        if !ok {
            return Err(take_error(error, "straight_through_gate_mix"));
        }
        Ok((Tensor::from_ptr(out.cast()), Tensor::from_ptr(mask.cast())))
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    fn random_leaf(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu)).set_requires_grad(true)
    }

    #[test]
    fn the_gate_mix_equals_the_composed_straight_through_formula() {
        // Logits that send some images each way; p near 0.5 for some.
        let logit_values: Vec<f32> = (0..32).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        let logits = Tensor::from_slice(&logit_values).view([16, 2]).set_requires_grad(true);
        let (basic, fullbit) = (random_leaf(&[16, 3, 4, 4]), random_leaf(&[16, 3, 4, 4]));
        let upstream = Tensor::randn([16, 3, 4, 4], (Kind::Float, Device::Cpu));
        let inputs = [&logits, &basic, &fullbit];

        let (out, mask) = straight_through_gate_mix(&logits, &basic, &fullbit).unwrap();
        let fused_grads = Tensor::run_backward(&[(&out * &upstream).sum(Kind::Float)], &inputs, false, false);

        let p = logits.softmax(1, Kind::Float).select(1, 1);
        let hard = p.gt(0.5).to_kind(Kind::Float);
        let m = &hard - p.detach() + &p;
        let composed = basic.lerp_tensor(&fullbit, &m.view([16, 1, 1, 1]));
        let composed_grads = Tensor::run_backward(&[(&composed * &upstream).sum(Kind::Float)], &inputs, false, false);

        assert!(out.equal(&composed), "the same values");
        assert!(mask.equal(&hard) && !mask.requires_grad());
        let chosen = Vec::<f32>::try_from(&mask).unwrap().iter().filter(|m| **m == 1.0).count();
        assert!(chosen > 0 && chosen < 16, "both paths are taken by some image ({chosen} of 16)");
        for ((fused, composed), what) in fused_grads.iter().zip(&composed_grads).zip(["logits", "basic", "fullbit"]) {
            assert!(fused.allclose(composed, 1e-5, 1e-6, false), "{what}: {fused:?} vs {composed:?}");
        }
    }

    #[test]
    fn a_bad_shape_is_an_error_not_a_crash() {
        let err = straight_through_gate_mix(&random_leaf(&[4, 3]), &random_leaf(&[4, 2, 2, 2]), &random_leaf(&[4, 2, 2, 2])).unwrap_err();
        assert!(err.to_string().contains("gate logits must be (N, 2)"), "{err}");
        assert!(dorefa_activation(&Tensor::from_slice(&[1i64, 2]), 3).is_err());
    }
}
