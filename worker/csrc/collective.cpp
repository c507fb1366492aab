// Data-parallel training's one collective, from the distributed engine libtorch
// ships (c10d): a TCPStore for the rendezvous and a Gloo process group for the
// all-reduce of the optimiser's flat gradient buffer. camp writes no collective
// of its own; this file only hands c10d's objects to Rust. Every entry point
// fails with a message in *error (ffi.h), never with an exception.

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "ffi.h"

// The torch wheel ships c10d's headers but not Gloo's, which
// ProcessGroupGloo.hpp includes: the class is declared here as far as camp
// uses it, from torch 2.11's header: its exported constructor, device factory
// and Options (whose layout this repeats). Its collectives are called through
// the Backend interface, whose virtual table the real class fills.
namespace gloo::transport {
class Device;
}
namespace c10d {
class TORCH_API ProcessGroupGloo : public Backend {
 public:
  struct TORCH_API Options : public Backend::Options {
    explicit Options(std::chrono::milliseconds timeout = kBackendDefaultTimeout);
    std::vector<std::shared_ptr<::gloo::transport::Device>> devices;
    int threads{2};
  };
  static std::shared_ptr<::gloo::transport::Device> createDeviceForHostname(const std::string& hostname,
                                                                             bool lazyInit = false);
  explicit ProcessGroupGloo(const c10::intrusive_ptr<Store>& store, int rank, int size, c10::intrusive_ptr<Options> options);
  ~ProcessGroupGloo() override;
};
}  // namespace c10d

namespace {
// Storage for one ProcessGroupGloo: the real class is 488 bytes in torch 2.11
// (`operator new(0x1e8)` in its own split()); the declaration above does not
// know that size, so the object is built in storage well beyond it and freed
// by its own (virtual, deleting) destructor.
constexpr std::size_t kGroupStorage = 4096;
}  // namespace

struct CampStore {
  c10::intrusive_ptr<c10d::TCPStore> store;
};

struct CampGroup {
  c10::intrusive_ptr<c10d::Backend> group;
};

extern "C" {

// The rendezvous store on host:port. The server (rank 0) listens on
// `listen_fd`, a socket its caller bound to loopback (TCPStore itself would
// listen on every interface), and does not wait for the others here: the
// process group's construction waits for every rank. Clients pass -1.
CampStore* camp_store_new(const char* host, uint16_t port, bool is_server, int listen_fd, int64_t world, int64_t timeout_ms,
                          char** error) {
  CampStore* out = nullptr;
  camp::guarded(error, [&] {
    c10d::TCPStoreOptions options;
    options.port = port;
    if (listen_fd >= 0) {
      options.masterListenFd = listen_fd;
    }
    options.isServer = is_server;
    options.numWorkers = static_cast<std::size_t>(world);
    options.waitWorkers = false;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    out = new CampStore{c10::make_intrusive<c10d::TCPStore>(std::string(host), options)};
  });
  return out;
}

uint16_t camp_store_port(const CampStore* store) { return store->store->getPort(); }

void camp_store_free(CampStore* store) { delete store; }

// Joins the Gloo group of `world` ranks as `rank` over loopback (`host`):
// returns once every rank has joined, or fails after timeout_ms.
CampGroup* camp_group_new(const CampStore* store, const char* host, int64_t rank, int64_t world, int64_t timeout_ms,
                          char** error) {
  CampGroup* out = nullptr;
  camp::guarded(error, [&] {
    auto options = c10::make_intrusive<c10d::ProcessGroupGloo::Options>(std::chrono::milliseconds(timeout_ms));
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(std::string(host)));
    c10::intrusive_ptr<c10d::Store> base = store->store;
    void* storage = ::operator new(kGroupStorage);
    c10d::Backend* group = nullptr;
    try {
      group = new (storage) c10d::ProcessGroupGloo(base, static_cast<int>(rank), static_cast<int>(world), options);
    } catch (...) {
      ::operator delete(storage);
      throw;
    }
    out = new CampGroup{c10::intrusive_ptr<c10d::Backend>::unsafe_steal_from_new(group)};
  });
  return out;
}

// Sums `tensor` over every rank, in place; returns when the sum has arrived.
bool camp_group_all_reduce_sum(CampGroup* group, const at::Tensor* tensor, char** error) {
  return camp::guarded(error, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    auto work = group->group->allreduce(tensors, options);
    TORCH_CHECK(work->wait(), "the all-reduce did not complete");
  });
}

// Copies rank `root`'s `tensor` into every other rank's, in place.
bool camp_group_broadcast(CampGroup* group, const at::Tensor* tensor, int64_t root, char** error) {
  return camp::guarded(error, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    auto work = group->group->broadcast(tensors, options);
    TORCH_CHECK(work->wait(), "the broadcast did not complete");
  });
}

void camp_group_free(CampGroup* group) { delete group; }
}
