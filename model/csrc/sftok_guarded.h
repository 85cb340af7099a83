// How every sftok C++ shim reports a libtorch exception to Rust: a function returns NULL on
// success or a malloc'd message, which the Rust side frees with sftok_free_message (defined once,
// in sftok_c10d.cpp). No C++ exception crosses into Rust.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

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
