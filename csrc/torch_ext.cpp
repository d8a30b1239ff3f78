// libtorch features that tch 0.24 does not expose: autocast with a chosen dtype (bf16), the
// channels_last memory format, the gradient-scaler kernels, the fused SGD step and the CUDA
// caching allocator's statistics, and the kernel profiler the benchmark uses.
//
// Tensors cross the boundary as `at::Tensor*`, the same handle tch's C API uses. Every function
// returns nullptr on success or a message (allocated with strdup, released by the caller with
// moco_ext_free) when libtorch threw.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <ATen/ops/_fused_sgd.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/DeviceGuard.h>
#include <kineto/ActivityType.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <set>
#include <utility>
#include <vector>

#include "guarded.h"

namespace {

at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

}  // namespace

extern "C" {

void moco_ext_free(char* message) { free(message); }

// Turns autocast on for the device type with `dtype` (a c10::ScalarType code) and reports the
// previous state, which moco_ext_autocast_exit restores.
char* moco_ext_autocast_enter(int cuda, int dtype, int* prev_enabled, int* prev_dtype) {
  return guarded([&] {
    auto type = device_type(cuda);
    *prev_enabled = at::autocast::is_autocast_enabled(type) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(type));
    at::autocast::set_autocast_enabled(type, true);
    at::autocast::set_autocast_dtype(type, static_cast<at::ScalarType>(dtype));
    at::autocast::increment_nesting();
  });
}

// Leaves the region; the cache of casted weights is dropped when the outermost region ends, as
// torch.autocast does.
char* moco_ext_autocast_exit(int cuda, int prev_enabled, int prev_dtype) {
  return guarded([&] {
    auto type = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(type, prev_enabled != 0);
    at::autocast::set_autocast_dtype(type, static_cast<at::ScalarType>(prev_dtype));
  });
}

char* moco_ext_to_channels_last(const at::Tensor* input, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(input->contiguous(at::MemoryFormat::ChannelsLast)); });
}

char* moco_ext_is_channels_last(const at::Tensor* input, int* out) {
  return guarded([&] {
    *out = input->dim() == 4 && input->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0;
  });
}

// grad *= inv_scale; found_inf = 1 if any element of grad is not finite (on the device, no sync).
char* moco_ext_unscale(at::Tensor* grad, at::Tensor* found_inf, const at::Tensor* inv_scale) {
  return guarded([&] {
    at::_amp_foreach_non_finite_check_and_unscale_({*grad}, *found_inf, *inv_scale);
  });
}

// One SGD step over a single flat tensor: buf = momentum·buf + grad; param -= lr·buf, skipped
// entirely (param and buf untouched) when found_inf is given and non-zero. Weight decay is already
// in grad, because it differs between parameters.
char* moco_ext_fused_sgd(at::Tensor* param, at::Tensor* grad, at::Tensor* buf, double momentum,
                         double lr, const at::Tensor* found_inf) {
  return guarded([&] {
    std::optional<at::Tensor> inf;
    if (found_inf != nullptr) {
      inf = *found_inf;
    }
    at::_fused_sgd_({*param}, {*grad}, {*buf}, /*weight_decay=*/0.0, momentum, lr,
                    /*dampening=*/0.0, /*nesterov=*/false, /*maximize=*/false,
                    /*is_first_step=*/false, /*grad_scale=*/std::nullopt, inf);
  });
}

// Makes `grad` (same shape, kind and device) the gradient of `param`: backward then accumulates
// into it in place, so a view of one flat buffer receives the parameter's gradient directly.
char* moco_ext_set_grad(at::Tensor* param, const at::Tensor* grad) {
  return guarded([&] { param->mutable_grad() = *grad; });
}

// Whether CUDA device `device` computes in bf16 natively (compute capability 8.0 or newer), the
// test torch.cuda.is_bf16_supported() makes. The hook asks the current device, hence the guard.
char* moco_ext_cuda_bf16_supported(int device, int* out) {
  return guarded([&] {
    const auto& hooks = at::detail::getCUDAHooks();
    if (!hooks.hasCUDA()) {
      *out = 0;
      return;
    }
    c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device)));
    *out = hooks.supportsBFloat16ConvolutionWithCuDNNv8() ? 1 : 0;
  });
}

// Bytes held by tensors now, reserved by the caching allocator, and the peak held by tensors.
char* moco_ext_cuda_memory(int device, int64_t* allocated, int64_t* reserved, int64_t* peak) {
  return guarded([&] {
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    *allocated = *reserved = *peak = 0;
    if (!allocator->initialized()) {
      return;
    }
    auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    constexpr auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].current;
    *reserved = stats.reserved_bytes[all].current;
    *peak = stats.allocated_bytes[all].peak;
  });
}

// Starts libtorch's (Kineto) profiler on this thread: host operators, and with `cuda` the device's
// kernels and copies.
char* moco_ext_profile_start(int cuda) {
  return guarded([&] {
    using torch::profiler::impl::ActivityType;
    torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
    std::set<ActivityType> activities{ActivityType::CPU};
    if (cuda) {
      activities.insert(ActivityType::CUDA);
    }
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
  });
}

// Stops the profiler and reports how long at least one kernel, copy or memset ran on a device
// (overlapping ones counted once) and how many there were.
char* moco_ext_profile_stop(int64_t* busy_ns, int64_t* device_activities) {
  return guarded([&] {
    auto result = torch::autograd::profiler::disableProfiler();
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    for (const auto& event : result->events()) {
      auto type = static_cast<libkineto::ActivityType>(event.activityType());
      if (type == libkineto::ActivityType::CONCURRENT_KERNEL ||
          type == libkineto::ActivityType::GPU_MEMCPY ||
          type == libkineto::ActivityType::GPU_MEMSET) {
        spans.emplace_back(event.startNs(), event.endNs());
      }
    }
    std::sort(spans.begin(), spans.end());
    uint64_t busy = 0;
    uint64_t covered_until = 0;
    for (const auto& [start, end] : spans) {
      auto from = std::max(start, covered_until);
      if (end > from) {
        busy += end - from;
      }
      covered_until = std::max(covered_until, end);
    }
    *busy_ns = static_cast<int64_t>(busy);
    *device_activities = static_cast<int64_t>(spans.size());
  });
}

}  // extern "C"
