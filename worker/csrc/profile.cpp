// libtorch's profiler (Kineto) around a piece of work, for `camp-worker bench
// --profile`: how many ops the host dispatched and how long the GPU's kernels
// ran, by name. Failures come back as a message in *error (ffi.h).

#include <torch/csrc/autograd/profiler_kineto.h>

#include <map>
#include <set>
#include <string>
#include <utility>

#include "ffi.h"

extern "C" {

// Starts profiling this thread's ops (and the autograd threads it starts);
// with_cuda: also the CUDA kernels, memory copies and sets (CUPTI).
bool camp_profiler_start(bool with_cuda, char** error) {
  return camp::guarded(error, [&] {
    using torch::profiler::impl::ActivityType;
    const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
    std::set<ActivityType> activities{ActivityType::CPU};
    if (with_cuda) activities.insert(ActivityType::CUDA);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
  });
}

// Stops profiling; *summary holds one line per device and event name:
// "cpu|cuda <TAB> count <TAB> total ns <TAB> name".
bool camp_profiler_stop(char** summary, char** error) {
  return camp::guarded(error, [&] {
    const auto result = torch::autograd::profiler::disableProfiler();
    std::map<std::pair<std::string, std::string>, std::pair<uint64_t, uint64_t>> totals;
    for (const auto& event : result->events()) {
      const std::string device = event.deviceType() == c10::DeviceType::CUDA ? "cuda" : "cpu";
      auto& [count, ns] = totals[{device, event.name()}];
      count += 1;
      ns += event.durationNs();
    }
    std::string text;
    for (const auto& [key, value] : totals) {
      text += key.first + "\t" + std::to_string(value.first) + "\t" + std::to_string(value.second) + "\t" + key.second + "\n";
    }
    *summary = camp::copy_text(text);
  });
}

}
