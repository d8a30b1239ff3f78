// The NCCL process group for csrc/dist.cpp, built only against a libtorch with CUDA (it needs
// CUDA's and NCCL's headers, from the torch wheel's nvidia packages).
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>

c10::intrusive_ptr<c10d::Backend> moco_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world,
                                                    std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
}
