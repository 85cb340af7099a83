// What sftok_c10d.cpp and sftok_c10d_nccl.cpp share; the C functions are declared on the Rust
// side (model/src/dist/c10d.rs).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <cstdlib>
#include <cstring>
#include <string>

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

namespace sftok {
inline char* message(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

// Runs `f`; NULL on success, else the exception's message (malloc'd).
template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception");
  }
}
}  // namespace sftok
