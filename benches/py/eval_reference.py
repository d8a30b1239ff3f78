"""The linear probe of facebookresearch/moco's main_lincls.py in PyTorch + torchvision, as the
reference for moco-server's `eval linear` (benches/eval.rs).

The encoder is a moco-server encoder export (safetensors with torchvision's ResNet keys and the
export's metadata: arch, stem, width, image_size, mean, std), loaded into the width-scaled
torchvision ResNet-18 of benches/py/moco_reference.py with a new fc (weight N(0, 0.01^2), bias 0).
Every backbone parameter is frozen and the model stays in eval mode throughout, as main_lincls.py
does; the normalisation is the export's.

Protocols (--protocol):
  fast  features of the un-augmented images (eval transform) computed once under no_grad, then fc
        trained on them: SGD lr 30, momentum 0.9, weight decay 0, batch 256, the training features
        reshuffled every epoch (last smaller batch kept), lr x0.1 at 60% and 80% of the epochs set
        once per epoch, held-out top-1 / top-5 after every epoch;
  moco  main_lincls.py's loop: a DataLoader with worker processes applies RandomResizedCrop(S,
        scale 0.08-1) + RandomHorizontalFlip + ToTensor + Normalize to every training image, each
        batch goes through the frozen backbone and fc, same optimiser and schedule; held-out
        top-1 / top-5 after every epoch over the eval transform.
The eval transform is main_lincls.py's Resize(256) + CenterCrop(224) scaled to the crop size S
(Resize(S x 8/7), or S when the image's shorter side is at most S); images already S x S are only
converted and normalised, as the engine's eval view does.

Timing: features_s (fast) covers both splits' feature passes, loaders included; train_s the fc
training with its per-epoch scoring (fast) or the training steps of every epoch (moco, scoring
left out, reported as score_s); epoch_s lists each epoch's training steps (moco). The step loop
keeps the loss on the device, as the engine does, so no step waits for the host.

Prints one JSON line:
  {"protocol", "top1", "top5", "best_top1", "final_loss", "features_s", "train_s", "score_s",
   "epoch_s", "probe_s", "wall_s", "train_images", "test_images", "steps", "settings"}
"""
import argparse
import json
import os
import random
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ left in the checkout
from moco_reference import ResNet18, read_safetensors  # noqa: E402  (the shared reference model)


class EvalTransform:
    """The evaluation transform at crop size `size` (see the module docs)."""

    def __init__(self, size, mean, std):
        self.size = size
        self.finish = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
        short = round(size * 8 / 7)
        self.resize_large = transforms.Compose([transforms.Resize(short),
                                                transforms.CenterCrop(size)])
        self.resize_small = transforms.Compose([transforms.Resize(size),
                                                transforms.CenterCrop(size)])

    def __call__(self, img):
        w, h = img.size
        if (w, h) != (self.size, self.size):
            img = (self.resize_small if min(w, h) <= self.size else self.resize_large)(img)
        return self.finish(img)


def train_transform(size, min_scale, mean, std):
    """main_lincls.py's training transform at crop size `size`."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(min_scale, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def read_export(path):
    """The tensors of an encoder export and its metadata (safetensors holds strings: numbers and
    lists are JSON)."""
    tensors, strings = read_safetensors(path)
    meta = {}
    for key, value in strings.items():
        try:
            meta[key] = json.loads(value)
        except ValueError:
            meta[key] = value
    if meta.get("arch") != "resnet18":
        sys.exit(f"{path}: arch {meta.get('arch')!r}; this reference builds resnet18 only")
    return tensors, meta


def build_probe(tensors, meta, classes, device):
    """The export as a frozen ResNet-18 backbone (fc replaced by the identity, so it returns the
    pooled features) and a new fc for `classes` with main_lincls.py's init."""
    width = int(meta["width"])
    backbone = ResNet18(width, meta["stem"], 1, "linear", 0, 1)
    backbone.fc = nn.Identity()
    backbone.load_state_dict(tensors, strict=True)  # every key of the export, nothing missing
    for q in backbone.parameters():
        q.requires_grad = False
    fc = nn.Linear(8 * width, classes)
    fc.weight.data.normal_(mean=0.0, std=0.01)
    fc.bias.data.zero_()
    return backbone.to(device), fc.to(device)


def lr_at(base_lr, epoch, epochs, milestones):
    """main_lincls.py's adjust_learning_rate, the milestones given as fractions of the epochs."""
    passed = sum(1 for m in milestones if epoch / epochs + 1e-9 >= m)
    return base_lr * 0.1 ** passed


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def topk_correct(logits, labels, k):
    """(top-1 hits, top-k hits) of a batch."""
    predicted = logits.topk(k, 1, True, True).indices
    hits = predicted.eq(labels.unsqueeze(1))
    return hits[:, :1].sum().item(), hits.sum().item()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", required=True, help="a moco-server encoder export")
    p.add_argument("--data", required=True, help="an image folder with train/ and test/")
    p.add_argument("--protocol", choices=["fast", "moco"], default="fast")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=30.0)
    p.add_argument("--milestones", default="0.6,0.8", help="fractions of the epochs")
    p.add_argument("--min-scale", type=float, default=0.08)
    p.add_argument("--image-size", type=int, default=0, help="0 = the export's crop size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast of the backbone's forward (the classifier stays fp32)")
    args = p.parse_args()
    start = time.perf_counter()

    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    train_dir = os.path.join(args.data, "train")
    test_dir = os.path.join(args.data, "test")
    tensors, meta = read_export(args.encoder)
    size = args.image_size or int(meta["image_size"])
    mean, std = meta["mean"], meta["std"]
    eval_tf = EvalTransform(size, mean, std)
    test_data = datasets.ImageFolder(test_dir, transform=eval_tf)
    if args.protocol == "fast":
        train_data = datasets.ImageFolder(train_dir, transform=eval_tf)
    else:
        train_data = datasets.ImageFolder(
            train_dir, transform=train_transform(size, args.min_scale, mean, std))
    assert train_data.classes == test_data.classes, "train/ and test/ have different classes"
    classes = len(train_data.classes)
    backbone, fc = build_probe(tensors, meta, classes, device)
    if cuda:
        backbone = backbone.to(memory_format=torch.channels_last)
    backbone.eval()  # BatchNorm stays in eval mode throughout, as main_lincls.py's model.eval()
    loader_args = dict(batch_size=args.batch, num_workers=args.workers, pin_memory=cuda)
    milestones = [float(m) for m in args.milestones.split(",") if m.strip()]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    k = min(5, classes)

    def backbone_features(x):
        """Pooled features of a batch, fp32, without gradient (the backbone is frozen)."""
        x = x.to(device, non_blocking=True)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            f = backbone(x)
        return f.float()

    def features_of(dataset):
        feats, labels = [], []
        for x, y in DataLoader(dataset, shuffle=False, **loader_args):
            feats.append(backbone_features(x))
            labels.append(y.to(device))
        return torch.cat(feats), torch.cat(labels)

    def score(feats, labels):
        with torch.no_grad():
            hits1 = hitsk = 0
            for i in range(0, feats.shape[0], 4096):
                a, b = topk_correct(fc(feats[i:i + 4096]), labels[i:i + 4096], k)
                hits1, hitsk = hits1 + a, hitsk + b
        n = max(feats.shape[0], 1)
        return 100.0 * hits1 / n, 100.0 * hitsk / n

    # main_lincls.py's optimiser: SGD over the parameters that take a gradient, fc's.
    optimizer = torch.optim.SGD(fc.parameters(), args.lr,
                                momentum=0.9, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    features_s, train_s, score_s, epoch_s = 0.0, 0.0, 0.0, []
    top1 = top5 = best_top1 = 0.0
    final_loss = float("nan")
    steps = 0

    if args.protocol == "fast":
        sync()
        t0 = time.perf_counter()
        train_f, train_y = features_of(train_data)
        test_f, test_y = features_of(test_data)
        sync()
        features_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = train_f.shape[0]
        for epoch in range(args.epochs):
            set_lr(optimizer, lr_at(args.lr, epoch, args.epochs, milestones))
            order = torch.randperm(n, generator=generator).to(device)
            loss_sum = torch.zeros((), device=device)
            for i in range(0, n, args.batch):
                idx = order[i:i + args.batch]
                y = train_y[idx]
                loss = F.cross_entropy(fc(train_f[idx]), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * y.shape[0]
                steps += 1
            final_loss = loss_sum.item() / n
            top1, top5 = score(test_f, test_y)
            best_top1 = max(best_top1, top1)
        sync()
        train_s = time.perf_counter() - t0
    else:
        n = len(train_data)
        for epoch in range(args.epochs):
            set_lr(optimizer, lr_at(args.lr, epoch, args.epochs, milestones))
            sync()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            loader = DataLoader(train_data, shuffle=True, generator=generator, **loader_args)
            for x, y in loader:
                y = y.to(device, non_blocking=True)
                loss = F.cross_entropy(fc(backbone_features(x)), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * y.shape[0]
                steps += 1
            sync()
            epoch_s.append(time.perf_counter() - t0)
            final_loss = loss_sum.item() / n
            t0 = time.perf_counter()
            top1, top5 = score(*features_of(test_data))
            best_top1 = max(best_top1, top1)
            score_s += time.perf_counter() - t0
        train_s = sum(epoch_s)

    settings = {
        "arch": meta["arch"], "stem": meta["stem"], "width": int(meta["width"]),
        "image_size": size, "mean": mean, "std": std, "classes": classes,
        "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "milestones": milestones,
        "sgd_momentum": 0.9, "weight_decay": 0.0, "init_std": 0.01,
        "min_scale": args.min_scale if args.protocol == "moco" else None,
        "threads": torch.get_num_threads(), "workers": args.workers, "device": str(device),
        "precision": args.precision, "torch": torch.__version__,
    }
    print(json.dumps({
        "protocol": args.protocol,
        "top1": top1,
        "top5": top5,
        "best_top1": best_top1,
        "final_loss": final_loss,
        "features_s": features_s,
        "train_s": train_s,
        "score_s": score_s,
        "epoch_s": epoch_s,
        "probe_s": features_s + train_s + score_s,
        "wall_s": time.perf_counter() - start,
        "train_images": len(train_data),
        "test_images": len(test_data),
        "steps": steps,
        "settings": settings,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
