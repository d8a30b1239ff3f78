"""MoCo's training step under PyTorch DistributedDataParallel, written as the official
facebookresearch/moco builder.py and main_moco.py do it, as the reference for `moco-server train
--nproc N` in the distributed bench.

  ddp_reference.py --world N --width W --batch B [--steps S] [--splits S] [--queue-size K]

Spawns N CPU processes over Gloo on 127.0.0.1 (N = 1 runs the same step in one process, with
split BN standing in for the ranks' BatchNorm), each with the global batch B / N, torch's threads
the machine's cores shared among them, and times the step on random 32x32 inputs: forward q,
momentum update, the keys all-gathered, shuffled by a permutation broadcast from rank 0, encoded,
all-gathered and unshuffled, InfoNCE, backward (DDP all-reduces the gradients, bucketed and
overlapped), SGD, enqueue of the gathered keys. Prints {"ms_per_step": ..., "world": N} from rank
0 (the fastest step: a shared machine adds noise to any single one).
"""
import argparse
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moco_reference import ResNet18  # noqa: E402


@torch.no_grad()
def concat_all_gather(tensor):
    """builder.py: all-gather without gradient."""
    gathered = [torch.ones_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor, async_op=False)
    return torch.cat(gathered, dim=0)


class MoCoDDP(nn.Module):
    """builder.py's MoCo with its DDP shuffle (the v1 loss, as main_moco.py trains)."""

    def __init__(self, make_encoder, dim, K, m, T):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q = make_encoder()
        self.encoder_k = make_encoder()
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.copy_(param_q.data)
            param_k.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data = param_k.data * self.m + param_q.data * (1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        keys = concat_all_gather(keys)
        batch_size = keys.shape[0]
        ptr = int(self.queue_ptr)
        self.queue[:, ptr:ptr + batch_size] = keys.T
        self.queue_ptr[0] = (ptr + batch_size) % self.K

    @torch.no_grad()
    def _batch_shuffle_ddp(self, x):
        batch_size_this = x.shape[0]
        x_gather = concat_all_gather(x)
        batch_size_all = x_gather.shape[0]
        num_gpus = batch_size_all // batch_size_this
        idx_shuffle = torch.randperm(batch_size_all)
        dist.broadcast(idx_shuffle, src=0)
        idx_unshuffle = torch.argsort(idx_shuffle)
        gpu_idx = dist.get_rank()
        idx_this = idx_shuffle.view(num_gpus, -1)[gpu_idx]
        return x_gather[idx_this], idx_unshuffle

    @torch.no_grad()
    def _batch_unshuffle_ddp(self, x, idx_unshuffle):
        batch_size_this = x.shape[0]
        x_gather = concat_all_gather(x)
        batch_size_all = x_gather.shape[0]
        num_gpus = batch_size_all // batch_size_this
        gpu_idx = dist.get_rank()
        idx_this = idx_unshuffle.view(num_gpus, -1)[gpu_idx]
        return x_gather[idx_this]

    def forward(self, im_q, im_k):
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            im_k, idx_unshuffle = self._batch_shuffle_ddp(im_k)
            k = F.normalize(self.encoder_k(im_k), dim=1)
            k = self._batch_unshuffle_ddp(k, idx_unshuffle)
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        self._dequeue_and_enqueue(k)
        return F.cross_entropy(logits, labels)


def rank_main(rank, args, port):
    world = args.world
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // world))
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    per_rank = args.batch // world
    # One BatchNorm group per rank, as the official code; a single process splits its batch
    # into the same number of groups.
    splits = args.splits // world
    make = lambda: ResNet18(args.width, "cifar", splits, "linear", 0, 128)
    model = MoCoDDP(make, 128, args.queue_size, 0.99, 0.2)
    model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    x1 = torch.randn(per_rank, 3, 32, 32)
    x2 = torch.randn(per_rank, 3, 32, 32)

    def step():
        loss = model(x1, x2)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    dist.barrier()
    times = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1000.0)
        t0 = t1
    if rank == 0:
        print(json.dumps({"ms_per_step": min(times), "world": world,
                          "threads": torch.get_num_threads()}), flush=True)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--splits", type=int, default=2)
    parser.add_argument("--queue-size", type=int, default=4096)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(args, port), nprocs=args.world, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
