"""The official MoCo CIFAR-10 demo (facebookresearch/moco, colab/moco_cifar10_demo.ipynb) in
PyTorch + torchvision, as the quality reference for moco-server's engine (benches/quality.rs).

What it keeps from the demo:
  * data: torchvision ImageFolder, a DataLoader with worker processes, per-image PIL transforms
    (RandomResizedCrop(32), RandomHorizontalFlip, RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1),
    p=0.8), RandomGrayscale(0.2), ToTensor, Normalize with the demo's constants), two views of
    every image, shuffle=True and drop_last=True;
  * model: ResNet-18 with the CIFAR stem (3x3 conv stride 1, no max-pool), fc -> 128 (linear
    head), SplitBatchNorm with 8 splits in both encoders, torchvision's weight init (the stem conv,
    which the demo swaps in after construction, keeps PyTorch's default init);
  * MoCo: K=4096, m=0.99, T=0.1, asymmetric loss, batch shuffle for the keys;
  * optimisation: SGD lr 0.06 x B/512, momentum 0.9, weight decay 5e-4 on every parameter, cosine
    lr set once per epoch as lr * 0.5 * (1 + cos(pi * epoch / epochs)) with the demo's 1-based
    epoch;
  * monitor: after every epoch, weighted kNN (k=200, t=0.1) on encoder_q's normalised output, the
    training set (test transform) as the memory bank and the test set as the queries.

Only the width is a budget knob the demo does not have: every channel count is width/64 of
ResNet-18's (benches/py/moco_reference.py holds the width-scaled ResNet and the split BN).

Prints one JSON line:
  {"seed", "knn_top1", "final_loss", "wall_s", "images_per_s", "knn_per_epoch", "loss_per_epoch",
   "lr_per_epoch", "train_s", "settings"}
final_loss is the mean loss over the last epoch (what the demo's train() returns); wall_s runs
from the start of main() (after the imports) to the end; images_per_s counts training images over
the time spent in the training loops only (kNN passes left out).
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ left in the checkout
from moco_reference import MoCo, ResNet18, sgd  # noqa: E402  (the shared reference model)

# Where benches/quality.rs writes the engine's synthetic set as an image folder (its
# CARGO_TARGET_TMPDIR is target/tmp).
SYNTHETIC_EXPORT = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "tmp", "quality-bench",
    "synthetic"))

# The demo's normalisation constants.
MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2023, 0.1994, 0.2010]


class TwoViews:
    """The demo's CIFAR10Pair: two independent draws of the training transform of one image."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)


def train_transform(size):
    return transforms.Compose([
        transforms.RandomResizedCrop(size),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def test_transform():
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def limited(dataset, limit):
    """At most `limit` images, spread evenly over the classes: in class order, class i keeps its
    first limit // C (+1 for the first limit % C classes) files in file-name order. The bench
    builds its smoke-run folders with the same rule."""
    if not limit or limit >= len(dataset):
        return dataset
    classes = len(dataset.classes)
    quota = [limit // classes + (1 if c < limit % classes else 0) for c in range(classes)]
    keep = []
    for index, label in enumerate(dataset.targets):  # ImageFolder lists files sorted per class
        if quota[label] > 0:
            quota[label] -= 1
            keep.append(index)
    subset = Subset(dataset, keep)
    subset.classes = dataset.classes
    subset.targets = [dataset.targets[i] for i in keep]
    return subset


def encoder(width, splits):
    """ModelBase of the demo: torchvision's resnet18 (here width-scaled) with the CIFAR stem."""
    net = ResNet18(width, "cifar", splits, "linear", 0, 128)
    # torchvision.models.ResNet.__init__'s init; the demo replaces conv1 after construction, so
    # the stem conv keeps nn.Conv2d's default init.
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and name != "conv1":
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return net


def adjust_learning_rate(optimizer, lr, epoch, epochs):
    """The demo's cosine schedule, set once per epoch. The demo's loop counts epochs from 1, so its
    first epoch already runs below the base lr and its last one at lr 0 (negligible over its 200
    epochs, half the training at a 2-epoch budget); --lr-first-epoch 0 counts from 0 instead."""
    lr = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def knn_predict(feature, feature_bank, feature_labels, classes, knn_k, knn_t):
    """The demo's weighted kNN: the k most similar bank features vote with exp(sim / t)."""
    sim_matrix = torch.mm(feature, feature_bank)
    sim_weight, sim_indices = sim_matrix.topk(k=knn_k, dim=-1)
    sim_labels = torch.gather(feature_labels.expand(feature.size(0), -1), dim=-1, index=sim_indices)
    sim_weight = (sim_weight / knn_t).exp()
    one_hot = torch.zeros(feature.size(0) * knn_k, classes, device=sim_labels.device)
    one_hot = one_hot.scatter(dim=-1, index=sim_labels.view(-1, 1), value=1.0)
    pred_scores = torch.sum(one_hot.view(feature.size(0), -1, classes) * sim_weight.unsqueeze(-1),
                            dim=1)
    return pred_scores.argsort(dim=-1, descending=True)


@torch.no_grad()
def knn_top1(net, memory_loader, test_loader, classes, knn_k, knn_t, device):
    """The demo's test(): bank = training images (test transform), queries = the test split."""
    net.eval()
    bank, bank_labels = [], []
    for data, target in memory_loader:
        bank.append(F.normalize(net(data.to(device)), dim=1))
        bank_labels.append(target)
    bank = torch.cat(bank, dim=0).t().contiguous()
    bank_labels = torch.cat(bank_labels).to(device)
    k = min(knn_k, bank.shape[1])
    correct, total = 0.0, 0
    for data, target in test_loader:
        feature = F.normalize(net(data.to(device)), dim=1)
        pred = knn_predict(feature, bank, bank_labels, classes, k, knn_t)
        correct += (pred[:, 0].cpu() == target).float().sum().item()
        total += data.size(0)
    net.train()
    return correct / total * 100.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True,
                   help="an image folder with train/<class>/* and test/<class>/*, or 'synthetic' "
                        "for the engine's built-in set as the bench exports it")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--width", type=int, default=16, help="ResNet base width (64 = ResNet-18)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--limit-train", type=int, default=0, help="use at most N training images")
    p.add_argument("--limit-test", type=int, default=0, help="use at most N test images")
    p.add_argument("--queue-size", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--lr-first-epoch", type=int, choices=[0, 1], default=1,
                   help="the epoch number the cosine gives the first epoch: 1 as in the demo's "
                        "loop, or 0")
    args = p.parse_args()
    start = time.perf_counter()

    if args.threads:
        torch.set_num_threads(args.threads)
    # The demo sets no seed; the bench needs repeatable runs. DataLoader workers derive their
    # seeds from torch's generator, so this also fixes the augmentations.
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    data = SYNTHETIC_EXPORT if args.data == "synthetic" else args.data
    if args.data == "synthetic" and not os.path.isdir(data):
        sys.exit(f"{data} is missing: write it with "
                 f"`cargo bench --bench quality -- --export-synthetic {data}`")
    train_dir = os.path.join(data, "train")
    test_dir = os.path.join(data, "test")
    train_data = limited(datasets.ImageFolder(train_dir, transform=TwoViews(train_transform(32))),
                         args.limit_train)
    memory_data = limited(datasets.ImageFolder(train_dir, transform=test_transform()),
                          args.limit_train)
    test_data = limited(datasets.ImageFolder(test_dir, transform=test_transform()),
                        args.limit_test)
    classes = len(train_data.classes)
    loader_args = dict(batch_size=args.batch, num_workers=args.workers,
                       pin_memory=device.type == "cuda")
    train_loader = DataLoader(train_data, shuffle=True, drop_last=True, **loader_args)
    memory_loader = DataLoader(memory_data, shuffle=False, **loader_args)
    test_loader = DataLoader(test_data, shuffle=False, **loader_args)
    assert len(train_loader) > 0, "fewer training images than one batch"

    # The demo's ModelMoCo(dim=128, K=4096, m=0.99, T=0.1, arch='resnet18', bn_splits=8,
    # symmetric=False).
    model = MoCo(lambda: encoder(args.width, 8), 128, args.queue_size, 0.99, 0.1, False).to(device)
    base_lr = 0.06 * args.batch / 512
    optimizer = sgd(model, base_lr, 0.9, 5e-4, exclude_bn_bias=False)

    knn_per_epoch, loss_per_epoch, lr_per_epoch = [], [], []
    train_s, images = 0.0, 0
    for epoch in range(1, args.epochs + 1):  # the demo's loop counts epochs from 1
        # The demo's train(): lr for this epoch, then one pass over the loader.
        model.train()
        lr_epoch = epoch - 1 + args.lr_first_epoch
        lr_per_epoch.append(adjust_learning_rate(optimizer, base_lr, lr_epoch, args.epochs))
        t0 = time.perf_counter()
        total_loss, total_num = 0.0, 0
        for (im_1, im_2), _ in train_loader:  # labels unused in pre-training
            im_1 = im_1.to(device, non_blocking=True)
            im_2 = im_2.to(device, non_blocking=True)
            perm = torch.randperm(im_2.shape[0], device=device)  # batch shuffle of the keys
            loss, keys = model(im_1, im_2, [perm])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model._dequeue_and_enqueue(keys)
            total_num += train_loader.batch_size
            total_loss += loss.item() * train_loader.batch_size
        train_s += time.perf_counter() - t0
        images += total_num
        loss_per_epoch.append(total_loss / total_num)
        knn_per_epoch.append(knn_top1(model.encoder_q, memory_loader, test_loader, classes, 200,
                                      0.1, device))
        print(f"epoch {epoch}: lr {lr_per_epoch[-1]:.5f} loss {loss_per_epoch[-1]:.4f} "
              f"kNN top-1 {knn_per_epoch[-1]:.2f}%", file=sys.stderr, flush=True)

    settings = {
        "train_images": len(train_data), "test_images": len(test_data), "classes": classes,
        "width": args.width, "batch": args.batch, "epochs": args.epochs,
        "steps_per_epoch": len(train_loader), "queue_size": args.queue_size, "momentum": 0.99,
        "temperature": 0.1, "bn_splits": 8, "symmetric": False, "base_lr": base_lr,
        "lr_update": "epoch", "lr_first_epoch": args.lr_first_epoch,
        "sgd_momentum": 0.9, "weight_decay": 5e-4, "knn_k": 200,
        "knn_t": 0.1, "knn_features": "head", "mean": MEAN, "std": STD,
        "threads": torch.get_num_threads(), "workers": args.workers, "device": str(device),
        "torch": torch.__version__,
    }
    print(json.dumps({
        "seed": args.seed,
        "knn_top1": knn_per_epoch[-1],
        "final_loss": loss_per_epoch[-1],
        "wall_s": time.perf_counter() - start,
        "images_per_s": images / train_s,
        "train_s": train_s,
        "knn_per_epoch": knn_per_epoch,
        "loss_per_epoch": loss_per_epoch,
        "lr_per_epoch": lr_per_epoch,
        "settings": settings,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
