// ProcessGroupNCCL for CUDA tensors (cargo feature `nccl`): needs the CUDA headers libtorch's
// c10d headers include and the `nccl.h` of the NCCL libtorch was built with (PyPI nvidia-nccl-*
// beside torch). Same error convention as sftok_c10d.cpp.

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "sftok_c10d.h"

extern "C" {

char* sftok_c10d_nccl(sftok_store* s, int rank, int size, int64_t timeout_ms, sftok_pg** out) {
  return sftok::guarded([&] {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    *out = new sftok_pg{c10::make_intrusive<c10d::ProcessGroupNCCL>(s->store, rank, size, opts)};
  });
}

}  // extern "C"
