// PyTorch's c10d process groups for data-parallel training: a TCPStore rendezvous, then a Gloo
// group (CPU tensors) or an NCCL group (CUDA tensors, csrc/dist_nccl.cpp, present when libtorch
// carries CUDA), and the four collectives the trainer uses: all-reduce, broadcast, all-gather and
// barrier. Every collective waits for its completion, so a tensor is ready when the call returns;
// a peer that died or stalled surfaces as an error after the group's timeout, never a hang.
//
// As in csrc/torch_ext.cpp, tensors cross as `at::Tensor*` and errors follow csrc/guarded.h.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/custom_function.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#ifdef MOCO_WITH_NCCL
// csrc/dist_nccl.cpp: ProcessGroupNCCL over the store.
c10::intrusive_ptr<c10d::Backend> moco_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world,
                                                    std::chrono::milliseconds timeout);
#endif

#include "dist_group.h"
#include "guarded.h"

namespace {

template <typename F>
char* c10d_guarded(F&& body) {
  return guarded(std::forward<F>(body), "unknown c10d error");
}

// `bind`: "" binds Gloo to the address this machine's hostname resolves to (loopback when it
// does not resolve), "if:NAME" to the network interface NAME, anything else to that address.
std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& bind) {
  if (bind.empty()) {
    return c10d::ProcessGroupGloo::createDefaultDevice();
  }
  if (bind.rfind("if:", 0) == 0) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(bind.substr(3));
  }
  return c10d::ProcessGroupGloo::createDeviceForHostname(bind);
}

void wait(const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait();
}

void sum_in_place(MocoDistGroup* group, at::Tensor& tensor) {
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  std::vector<at::Tensor> tensors{tensor};
  wait(group->backend->allreduce(tensors, opts));
}

// The sum over the ranks with a gradient: its backward is the sum over the ranks of the
// gradients (torch.distributed.nn.functional.all_reduce), so a value computed from every
// rank's statistics sends each rank its share. What SyncBatchNorm is built on.
struct SumAcrossRanks : public torch::autograd::Function<SumAcrossRanks> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t group) {
    ctx->saved_data["group"] = group;
    auto out = x.contiguous().clone();
    sum_in_place(reinterpret_cast<MocoDistGroup*>(group), out);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto group = reinterpret_cast<MocoDistGroup*>(ctx->saved_data["group"].toInt());
    auto grad = grads[0].contiguous().clone();
    sum_in_place(group, grad);
    return {grad, at::Tensor()};
  }
};

}  // namespace

extern "C" {

// Joins the group of `world` processes whose store rank 0 serves at master_addr:port (rank 0
// starts the store and waits there for the others until `timeout_ms`). `nccl` picks NCCL,
// otherwise Gloo bound as `bind` says.
char* moco_dist_new(const char* master_addr, int port, int rank, int world, int64_t timeout_ms,
                    int nccl, const char* bind, MocoDistGroup** out) {
  return c10d_guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0;
    opts.numWorkers = world;
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), opts);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(nccl ? "nccl" : "gloo", tcp);
    auto group = new MocoDistGroup{store, {}};
    try {
      if (nccl) {
#ifdef MOCO_WITH_NCCL
        group->backend = moco_nccl_backend(store, rank, world, timeout);
#else
        throw std::runtime_error("this build of libtorch has no CUDA, so no NCCL: use gloo");
#endif
      } else {
        auto options = c10d::ProcessGroupGloo::Options::create(timeout);
        options->devices.push_back(gloo_device(bind));
        group->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
      }
    } catch (...) {
      delete group;
      throw;
    }
    *out = group;
  });
}

void moco_dist_free(MocoDistGroup* group) { delete group; }

// In place over every rank: the sum (op 0), the maximum (op 1) or the minimum (op 2).
char* moco_dist_all_reduce(MocoDistGroup* group, at::Tensor* tensor, int op) {
  return c10d_guarded([&] {
    c10d::AllreduceOptions opts;
    opts.reduceOp = op == 1 ? c10d::ReduceOp::MAX : op == 2 ? c10d::ReduceOp::MIN
                                                            : c10d::ReduceOp::SUM;
    std::vector<at::Tensor> tensors{*tensor};
    wait(group->backend->allreduce(tensors, opts));
  });
}

// `tensor` becomes rank `root`'s on every rank.
char* moco_dist_broadcast(MocoDistGroup* group, at::Tensor* tensor, int root) {
  return c10d_guarded([&] {
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    std::vector<at::Tensor> tensors{*tensor};
    wait(group->backend->broadcast(tensors, opts));
  });
}

// Every rank's `tensor` (one shape on all ranks), concatenated along dim 0 in rank order.
char* moco_dist_all_gather(MocoDistGroup* group, const at::Tensor* tensor, at::Tensor** out) {
  return c10d_guarded([&] {
    auto input = tensor->contiguous();
    std::vector<at::Tensor> parts;
    for (int r = 0; r < group->backend->getSize(); ++r) {
      parts.push_back(at::empty_like(input));
    }
    std::vector<std::vector<at::Tensor>> outputs{parts};
    std::vector<at::Tensor> inputs{input};
    wait(group->backend->allgather(outputs, inputs));
    *out = new at::Tensor(at::cat(outputs[0], 0));
  });
}

// The sum of every rank's `tensor`, differentiable (see SumAcrossRanks). The group must outlive
// the backward pass.
char* moco_dist_sum_with_grad(MocoDistGroup* group, const at::Tensor* tensor, at::Tensor** out) {
  return c10d_guarded([&] {
    *out = new at::Tensor(SumAcrossRanks::apply(*tensor, reinterpret_cast<int64_t>(group)));
  });
}

char* moco_dist_barrier(MocoDistGroup* group) {
  return c10d_guarded([&] { wait(group->backend->barrier()); });
}

}  // extern "C"
