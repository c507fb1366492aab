// libtorch ops of camp's own, where composing tch's ops would cost several
// kernels (and host-side dispatches) each way; training on a GPU is bound by
// that host-side cost (GPU.md). Each entry point returns a new tensor, or null
// with a message in *error (freed by camp_free_error): no exception crosses
// into Rust.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

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
    const at::Tensor x = ctx->get_saved_variables()[0];
    const auto [below, above] = unit_interval_bounds(x.scalar_type());
    return {at::hardtanh_backward(grad[0], x, below, above), at::Tensor()};
  }
};

char* copy_message(const char* message) {
  char* copy = static_cast<char*>(std::malloc(std::strlen(message) + 1));
  if (copy != nullptr) std::strcpy(copy, message);
  return copy;
}

template <typename F>
at::Tensor* guarded(char** error, F&& make) {
  try {
    return new at::Tensor(make());
  } catch (const c10::Error& e) {
    *error = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  }
  return nullptr;
}

}  // namespace

extern "C" {

at::Tensor* camp_dorefa_activation(const at::Tensor* x, int64_t levels, char** error) {
  return guarded(error, [&] { return DorefaActivation::apply(*x, levels); });
}

void camp_free_error(char* error) { std::free(error); }

}
