// The error convention of the C shims (csrc/torch_ext.cpp, csrc/dist.cpp): a function returns
// nullptr on success or a message, allocated with strdup and released by the caller with
// moco_ext_free, when libtorch threw.
#pragma once

#include <cstring>
#include <exception>

template <typename F>
char* guarded(F&& body, const char* unknown = "unknown libtorch error") {
  try {
    body();
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  } catch (...) {
    return strdup(unknown);
  }
}
