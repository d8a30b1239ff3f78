// The gradient all-reduce of data-parallel training, overlapped with backward as
// DistributedDataParallel's Reducer does it: the gradient is cut into buckets, and each bucket's
// all-reduce starts, asynchronously, as soon as backward has accumulated the gradient of every
// parameter in it, while backward goes on with the layers before. Buckets start in one fixed
// order on every rank, because c10d matches collectives by their order; one backward runs the
// same graph on every rank, so the hooks fire in the same order everywhere, among the collectives
// backward issues itself (SyncBatchNorm's).
//
// The trainer's gradient is one flat buffer whose views are the parameters' `.grad`
// (src/moco/params.rs), so a bucket is a slice of it, reduced in place: nothing is copied in or
// out, as c10d::Reducer does with its own bucket buffers. Which parameters share a bucket is
// decided by the caller (src/dist/reducer.rs, DDP's sizes).
//
// As the other shims: tensors cross as `at::Tensor*`, errors follow csrc/guarded.h.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <memory>
#include <mutex>
#include <vector>

#include "dist_group.h"
#include "guarded.h"

namespace {

struct Bucket {
  // The bucket's slice of the flat gradient.
  int64_t offset;
  int64_t numel;
  // Parameters whose gradient backward accumulates into the slice (frozen ones take none).
  int trained;
};

// Shared by the hooks (through weak pointers, so that the hooks, which the accumulators own, do
// not keep it alive) and the handle the trainer holds.
struct ReducerState {
  c10::intrusive_ptr<c10d::Backend> backend;
  at::Tensor flat_grad;
  // In launch order: the first holds the parameters whose gradients backward computes first.
  std::vector<Bucket> buckets;
  // The parameters' gradient accumulators, kept alive so that they (and the hooks on them)
  // persist from one backward to the next; the parameters themselves hold them weakly.
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;

  std::mutex mutex;
  // Between `arm` and `finish`: the hooks launch buckets only then.
  bool armed = false;
  // Per bucket: gradients still to be accumulated in this backward.
  std::vector<int> pending;
  // The next bucket to launch; buckets before it are in `works`, in order.
  size_t next = 0;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;

  void launch_next_locked() {
    const auto& bucket = buckets[next++];
    std::vector<at::Tensor> slice{flat_grad.narrow(0, bucket.offset, bucket.numel)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    works.push_back(backend->allreduce(slice, opts));
  }

  // Launches every bucket from `next` on whose gradients are complete, in order.
  void launch_ready_locked() {
    while (next < buckets.size() && pending[next] == 0) {
      launch_next_locked();
    }
  }

  void gradient_ready(size_t bucket) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!armed) {
      return;
    }
    pending[bucket] -= 1;
    launch_ready_locked();
  }
};

}  // namespace

struct MocoGradReducer {
  std::shared_ptr<ReducerState> state;
};

extern "C" {

// A reducer of `flat_grad` over `group`: bucket b is the slice [offsets[b], offsets[b] + numels[b])
// and parameter i (whose `.grad` is a view into its bucket's slice) belongs to bucket
// buckets_of[i], or to none when it is -1 (frozen: backward never reaches it).
char* moco_dist_reducer_new(MocoDistGroup* group, const at::Tensor* flat_grad,
                            at::Tensor** params, const int64_t* bucket_of, int64_t n_params,
                            const int64_t* offsets, const int64_t* numels, int64_t n_buckets,
                            MocoGradReducer** out) {
  return guarded([&] {
    auto state = std::make_shared<ReducerState>();
    state->backend = group->backend;
    state->flat_grad = *flat_grad;
    for (int64_t b = 0; b < n_buckets; ++b) {
      TORCH_CHECK(offsets[b] >= 0 && numels[b] > 0 &&
                      offsets[b] + numels[b] <= flat_grad->numel(),
                  "gradient bucket ", b, " lies outside the flat gradient");
      state->buckets.push_back(Bucket{offsets[b], numels[b], 0});
    }
    std::weak_ptr<ReducerState> weak = state;
    for (int64_t i = 0; i < n_params; ++i) {
      if (bucket_of[i] < 0) {
        continue;
      }
      TORCH_CHECK(bucket_of[i] < n_buckets, "parameter ", i, " names bucket ", bucket_of[i],
                  " of ", n_buckets);
      auto bucket = static_cast<size_t>(bucket_of[i]);
      state->buckets[bucket].trained += 1;
      auto accumulator = torch::autograd::impl::grad_accumulator(*params[i]);
      TORCH_CHECK(accumulator, "parameter ", i, " does not require a gradient");
      // Runs after AccumulateGrad has added this backward's gradient into the parameter's view.
      accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [weak, bucket](const torch::autograd::variable_list& outputs,
                         const torch::autograd::variable_list& /*inputs*/) {
            if (auto state = weak.lock()) {
              state->gradient_ready(bucket);
            }
            return outputs;
          }));
      state->accumulators.push_back(std::move(accumulator));
    }
    *out = new MocoGradReducer{std::move(state)};
  });
}

void moco_dist_reducer_free(MocoGradReducer* reducer) { delete reducer; }

// Before a backward pass (its gradients zeroed): every bucket waits for its gradients again. A
// bucket without trained parameters is launched at once.
char* moco_dist_reducer_arm(MocoGradReducer* reducer) {
  return guarded([&] {
    auto& state = *reducer->state;
    std::lock_guard<std::mutex> lock(state.mutex);
    state.works.clear();
    state.next = 0;
    state.pending.clear();
    for (const auto& bucket : state.buckets) {
      state.pending.push_back(bucket.trained);
    }
    state.armed = true;
    state.launch_ready_locked();
  });
}

// After the backward pass: launches the buckets whose gradients never all arrived (parameters
// this pass did not reach), in order, waits for every bucket, and leaves the flat gradient as
// the ranks' mean; `started_before` is the number of buckets that had started before. A peer
// that died surfaces here as the collective's error, after the group's timeout.
char* moco_dist_reducer_finish(MocoGradReducer* reducer, int64_t* started_before) {
  return guarded([&] {
    auto& state = *reducer->state;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    {
      std::lock_guard<std::mutex> lock(state.mutex);
      TORCH_CHECK(state.armed, "the gradient reducer was not armed before backward");
      state.armed = false;
      *started_before = static_cast<int64_t>(state.works.size());
      while (state.next < state.buckets.size()) {
        state.launch_next_locked();
      }
      works.swap(state.works);
    }
    for (auto& work : works) {
      work->wait();
    }
    state.flat_grad.div_(state.backend->getSize());
  });
}

}  // extern "C"
