// libtorch ops of camp's own, where composing tch's ops would cost several
// kernels (and host-side dispatches) each way; training on a GPU is bound by
// that host-side cost (GPU.md). Each entry point hands back new tensors, or
// fails with a message in *error (ffi.h).

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <limits>
#include <utility>

#include "ffi.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The representable neighbours of 0 (below) and of 1 (above) in a floating
// type: hardtanh_backward passes the gradient strictly between its bounds,
// which at these values is exactly 0 <= x <= 1 for every x of that type.
template <typename T>
std::pair<double, double> unit_interval_bounds() {
  return {-static_cast<double>(std::numeric_limits<T>::denorm_min()),
          1.0 + static_cast<double>(std::numeric_limits<T>::epsilon())};
}

std::pair<double, double> unit_interval_bounds(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return unit_interval_bounds<float>();
    case at::kDouble: return unit_interval_bounds<double>();
    case at::kBFloat16: return unit_interval_bounds<c10::BFloat16>();
    case at::kHalf: return unit_interval_bounds<c10::Half>();
    default: TORCH_CHECK(false, "DoReFa activation of a ", type, " tensor: a floating type is needed");
  }
}

// DoReFa's activation (ALGORITHMS 3): round_k(clamp(x, 0, 1)), with the
// clamp's gradient (1 where 0 <= x <= 1) passed straight through the rounding.
// Forward: fake quantisation at scale 1/levels on [0, levels] clamps and
// rounds in one kernel. Backward: one hardtanh_backward kernel.
struct DorefaActivation : public torch::autograd::Function<DorefaActivation> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t levels) {
    ctx->save_for_backward({x});
    return at::fake_quantize_per_tensor_affine(x, 1.0 / static_cast<double>(levels), 0, 0, levels);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    if (!grad[0].defined()) return {at::Tensor(), at::Tensor()};
    const at::Tensor x = ctx->get_saved_variables()[0];
    const auto [below, above] = unit_interval_bounds(x.scalar_type());
    return {at::hardtanh_backward(grad[0], x, below, above), at::Tensor()};
  }
};

// DoReFa's weight quantisation (ALGORITHMS 3) of weights laid end to end in
// `flat`, one segment (of `lengths`) per weight, `ids` naming each element's
// segment: t = tanh(w); 2u = t / max|t| + 1 with the max per weight;
// w_q = fq(2u) - 1 = 2 round_k(u) - 1, straight through the rounding (2u always
// lies in the quantiser's range), the tanh and the max differentiated. The
// backward is written out: autograd's would run PyTorch's CUDA segment_reduce
// backward, one thread per weight looping over all its elements.
struct DorefaWeights : public torch::autograd::Function<DorefaWeights> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& flat, const at::Tensor& lengths,
                            const at::Tensor& ids, int64_t levels) {
    const at::Tensor t = at::tanh(flat);
    const at::Tensor magnitude = t.abs();
    // |t| >= 0: a reduction from 0 is the max.
    const at::Tensor max_abs = at::segment_reduce(magnitude, "max", lengths, {}, {}, 0, false, at::Scalar(0.0));
    const at::Tensor twice_u = t / max_abs.index_select(0, ids) + 1;
    ctx->save_for_backward({t, magnitude, max_abs, lengths, ids});
    return at::fake_quantize_per_tensor_affine(twice_u, 2.0 / static_cast<double>(levels), 0, 0, levels) - 1;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const at::Tensor& g = grad[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &t = saved[0], &magnitude = saved[1], &max_abs = saved[2], &lengths = saved[3], &ids = saved[4];
    const auto per_weight_sum = [&](const at::Tensor& x) {
      return at::segment_reduce(x, "sum", lengths, {}, {}, 0, false, at::Scalar(0.0));
    };
    const at::Tensor max_each = max_abs.index_select(0, ids);
    // Through t / M: 1 / M to t, -sum(g t) / M^2 to each weight's M.
    const at::Tensor d_max = -per_weight_sum(g * t) / (max_abs * max_abs);
    // M = max |t| hands its gradient to the elements at the max (shared evenly
    // between ties), signed as t.
    const at::Tensor at_max = magnitude.eq(max_each).to(t.scalar_type());
    const at::Tensor d_max_each = (d_max / per_weight_sum(at_max)).index_select(0, ids);
    const at::Tensor d_t = g / max_each + at_max * t.sign() * d_max_each;
    return {d_t * (1 - t * t), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// A dual-path block's output under its gate in stage sp (ALGORITHMS 5): per
// image, p = softmax(logits)[1] and mask = (p > 0.5); the output is the 4-bit
// path's where mask = 1, the 1-bit path's elsewhere. Backward is that of
// (1 - m) * basic + m * fullbit with the straight-through m = hard - p.detach() + p:
// d m = sum over the image of g * (fullbit - basic), passed to p and through
// the softmax to the logits. Returns the output and the 0/1 mask (fp32, no gradient).
struct StraightThroughGateMix : public torch::autograd::Function<StraightThroughGateMix> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& basic,
                               const at::Tensor& fullbit) {
    TORCH_CHECK(logits.dim() == 2 && logits.size(1) == 2, "gate logits must be (N, 2), got ", logits.sizes());
    TORCH_CHECK(basic.sizes() == fullbit.sizes() && basic.dim() == 4 && basic.size(0) == logits.size(0),
                "the two paths' outputs must be (N, C, H, W) alike for N = ", logits.size(0), ", got ", basic.sizes(),
                " and ", fullbit.sizes());
    const at::Tensor probs = at::softmax(logits, 1, at::kFloat);
    const at::Tensor chosen = probs.select(1, 1).gt(0.5);
    const at::Tensor out = at::where(chosen.view({-1, 1, 1, 1}), fullbit, basic);
    const at::Tensor mask = chosen.to(at::kFloat);
    ctx->saved_data["logits_type"] = static_cast<int64_t>(logits.scalar_type());
    ctx->save_for_backward({probs, chosen, basic, fullbit});
    ctx->mark_non_differentiable({mask});
    return {out, mask};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &probs = saved[0], &chosen = saved[1], &basic = saved[2], &fullbit = saved[3];
    const at::Tensor& g = grad[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const at::Tensor per_image = chosen.view({-1, 1, 1, 1});
    const at::Tensor d_basic = at::where(per_image, at::Scalar(0.0), g);
    const at::Tensor d_fullbit = at::where(per_image, g, at::Scalar(0.0));
    const at::Tensor d_mask = at::sum(g * (fullbit - basic), {1, 2, 3}, false, at::kFloat);
    // Straight through to p = probs[:, 1], then the softmax's own backward.
    const at::Tensor d_probs = at::constant_pad_nd(d_mask.unsqueeze(1), {1, 0});
    const auto logits_type = static_cast<at::ScalarType>(ctx->saved_data["logits_type"].toInt());
    return {at::_softmax_backward_data(d_probs, probs, 1, logits_type), d_basic, d_fullbit};
  }
};

}  // namespace

extern "C" {

at::Tensor* camp_dorefa_activation(const at::Tensor* x, int64_t levels, char** error) {
  at::Tensor* out = nullptr;
  camp::guarded(error, [&] { out = new at::Tensor(DorefaActivation::apply(*x, levels)); });
  return out;
}

at::Tensor* camp_dorefa_weights(const at::Tensor* flat, const at::Tensor* lengths, const at::Tensor* ids, int64_t levels,
                                char** error) {
  at::Tensor* out = nullptr;
  camp::guarded(error, [&] { out = new at::Tensor(DorefaWeights::apply(*flat, *lengths, *ids, levels)); });
  return out;
}

// Writes the mixed output to *out and the 0/1 mask to *mask; false (and *error) on failure.
bool camp_straight_through_gate_mix(const at::Tensor* logits, const at::Tensor* basic, const at::Tensor* fullbit,
                                    at::Tensor** out, at::Tensor** mask, char** error) {
  return camp::guarded(error, [&] {
    auto outputs = StraightThroughGateMix::apply(*logits, *basic, *fullbit);
    *out = new at::Tensor(std::move(outputs[0]));
    *mask = new at::Tensor(std::move(outputs[1]));
  });
}

}
