// libtorch's c10d (the engine behind torch.distributed) for sftok's data-parallel training: a
// TCPStore / FileStore rendezvous, ProcessGroupGloo (CPU tensors) and the collectives the trainer
// needs. tch 0.26 exposes none of it. ProcessGroupNCCL lives in sftok_c10d_nccl.cpp (cargo
// feature `nccl`), so CPU machines build without CUDA headers.
//
// Every function returns NULL on success or a malloc'd message (sftok_guarded.h): a c10d
// exception (a peer that went away, a timeout, a busy port) must never abort the process.
// Tensors arrive as `at::Tensor*` (what tch's `Tensor::as_ptr` points at).

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <sstream>
#include <vector>

#include "sftok_c10d.h"

namespace {
using sftok::guarded;

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case SFTOK_REDUCE_MAX:
      return c10d::ReduceOp::MAX;
    default:
      return c10d::ReduceOp::SUM;
  }
}

std::chrono::milliseconds ms(int64_t v) { return std::chrono::milliseconds(v); }
}  // namespace

extern "C" {

char* sftok_c10d_tcp_store(const char* host, uint16_t port, int is_server, int world_size, int64_t timeout_ms,
                           sftok_store** out) {
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world_size);
    opts.waitWorkers = true; // clients count themselves in; the server waits for all
    opts.timeout = ms(timeout_ms);
    *out = new sftok_store{c10::make_intrusive<c10d::TCPStore>(std::string(host), opts)};
  });
}

char* sftok_c10d_file_store(const char* path, int world_size, int64_t timeout_ms, sftok_store** out) {
  return guarded([&] {
    auto store = c10::make_intrusive<c10d::FileStore>(std::string(path), world_size);
    store->setTimeout(ms(timeout_ms));
    *out = new sftok_store{store};
  });
}

char* sftok_c10d_prefix_store(sftok_store* base, const char* prefix, sftok_store** out) {
  return guarded([&] { *out = new sftok_store{c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), base->store)}; });
}

void sftok_c10d_store_free(sftok_store* s) { delete s; }

char* sftok_c10d_store_set(sftok_store* s, const char* key, const uint8_t* data, size_t len) {
  return guarded([&] { s->store->set(std::string(key), std::vector<uint8_t>(data, data + len)); });
}

char* sftok_c10d_store_get(sftok_store* s, const char* key, int64_t timeout_ms, uint8_t** data, size_t* len) {
  return guarded([&] {
    s->store->wait({std::string(key)}, ms(timeout_ms));
    const std::vector<uint8_t> v = s->store->get(std::string(key));
    *len = v.size();
    *data = static_cast<uint8_t*>(std::malloc(v.size() > 0 ? v.size() : 1));
    if (!v.empty()) std::memcpy(*data, v.data(), v.size());
  });
}

void sftok_c10d_bytes_free(uint8_t* data) { std::free(data); }

char* sftok_c10d_store_check(sftok_store* s, const char* key, int* exists) {
  return guarded([&] { *exists = s->store->check({std::string(key)}) ? 1 : 0; });
}

// Gloo over the interfaces named in `ifnames` (comma-separated, torch's GLOO_SOCKET_IFNAME), else
// the device torch picks by default (this host's name, or loopback when it does not resolve).
char* sftok_c10d_gloo(sftok_store* s, int rank, int size, int64_t timeout_ms, const char* ifnames, sftok_pg** out) {
  return guarded([&] {
    auto opts = c10d::ProcessGroupGloo::Options::create(ms(timeout_ms));
    if (ifnames != nullptr && ifnames[0] != '\0') {
      std::stringstream names(ifnames);
      std::string name;
      while (std::getline(names, name, ',')) {
        if (!name.empty()) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      }
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    *out = new sftok_pg{c10::make_intrusive<c10d::ProcessGroupGloo>(s->store, rank, size, opts)};
  });
}

void sftok_c10d_pg_free(sftok_pg* pg) { delete pg; }

char* sftok_c10d_allreduce_start(sftok_pg* pg, const at::Tensor* t, int op, sftok_work** out) {
  return guarded([&] {
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = reduce_op(op);
    *out = new sftok_work{pg->backend->allreduce(ts, o)};
  });
}

char* sftok_c10d_broadcast_start(sftok_pg* pg, const at::Tensor* t, int root, sftok_work** out) {
  return guarded([&] {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    *out = new sftok_work{pg->backend->broadcast(ts, o)};
  });
}

char* sftok_c10d_barrier_start(sftok_pg* pg, sftok_work** out) {
  return guarded([&] { *out = new sftok_work{pg->backend->barrier(c10d::BarrierOptions())}; });
}

// Waits for a collective (at most the process group's timeout) and frees the handle.
char* sftok_c10d_work_wait(sftok_work* w) {
  char* err = guarded([&] {
    if (!w->work->wait()) throw std::runtime_error("the collective did not complete");
  });
  delete w;
  return err;
}

}  // extern "C"
