// What sftok_c10d.cpp and sftok_c10d_nccl.cpp share; the C functions are declared on the Rust
// side (model/src/dist/c10d.rs).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <string>

#include "sftok_guarded.h"

#define SFTOK_REDUCE_SUM 0
#define SFTOK_REDUCE_MAX 1

struct sftok_store {
  c10::intrusive_ptr<c10d::Store> store;
};
struct sftok_pg {
  c10::intrusive_ptr<c10d::Backend> backend;
};
struct sftok_work {
  c10::intrusive_ptr<c10d::Work> work;
};

