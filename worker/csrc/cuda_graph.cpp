// A training step captured once in a CUDA graph and replayed (libtorch's
// at::cuda::CUDAGraph), so that a step costs the host one launch instead of
// thousands of op dispatches (GPU.md: the step is bound by launches).
//
// Built apart from csrc/'s other files, as a shared library of its own
// (worker/build.rs): CUDAGraph lives in libtorch_cuda, which the worker does
// not link. The worker loads it only after libtorch_cuda is loaded (a GPU
// machine), so on the CPU the library never loads and the flag is refused.
//
// Capture follows PyTorch's whole-network recipe: the captured ops run on a
// side stream that first waits for the current one; the current stream then
// waits for the capture, and replays are launched on the current stream, in
// order with the copies into the static input buffers. The default CUDA
// generator is registered with the graph by capture_begin: a replay reads the
// generator's seed and offset at that moment, so seeding before a replay
// (stage rl seeds each step) gives the samples eager execution would.

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <optional>

#include "ffi.h"

namespace {
// `waiter` runs what is queued after this point only once `first` has run what is queued now.
void order(const c10::cuda::CUDAStream& first, const c10::cuda::CUDAStream& waiter) {
  cudaEvent_t event;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(event, first.stream()));
  C10_CUDA_CHECK(cudaStreamWaitEvent(waiter.stream(), event, 0));
  C10_CUDA_CHECK(cudaEventDestroy(event));
}
}  // namespace

struct CampGraph {
  at::cuda::CUDAGraph graph;
  std::optional<c10::cuda::CUDAStreamGuard> side;
  c10::DeviceIndex device = 0;
};

extern "C" {

CampGraph* camp_graph_new(char** error) {
  CampGraph* out = nullptr;
  camp::guarded(error, [&] { out = new CampGraph(); });
  return out;
}

// Starts capturing on a side stream of `device`: every op issued by this
// thread (and by the autograd engine for it) until camp_graph_capture_end is
// recorded, not run.
bool camp_graph_capture_begin(CampGraph* g, int64_t device, char** error) {
  return camp::guarded(error, [&] {
    g->device = static_cast<c10::DeviceIndex>(device);
    auto current = c10::cuda::getCurrentCUDAStream(g->device);
    auto side = c10::cuda::getStreamFromPool(false, g->device);
    // The side stream starts after what is already queued (the static inputs' copies).
    order(current, side);
    g->side.emplace(side);
    g->graph.capture_begin();
  });
}

bool camp_graph_capture_end(CampGraph* g, char** error) {
  return camp::guarded(error, [&] {
    auto side = c10::cuda::getCurrentCUDAStream(g->device);
    try {
      g->graph.capture_end();
    } catch (...) {
      g->side.reset();
      throw;
    }
    g->side.reset();
    order(side, c10::cuda::getCurrentCUDAStream(g->device));
  });
}

// Runs the captured step once more, on the current stream.
bool camp_graph_replay(CampGraph* g, char** error) {
  return camp::guarded(error, [&] { g->graph.replay(); });
}

void camp_graph_free(CampGraph* g) { delete g; }
}
