// A joined c10d process group as the shims hold it (csrc/dist.cpp creates it, csrc/dist_reducer.cpp
// all-reduces gradients over it): the rendezvous store and the Gloo or NCCL backend.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

struct MocoDistGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};
