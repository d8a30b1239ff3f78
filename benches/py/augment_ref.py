"""Reference for `cargo bench --bench augment`: the official CIFAR demo's two-view augmentation
with torchvision's per-image transforms, through a DataLoader with worker processes.

The recipe is the MoCo CIFAR demo's train transform: RandomResizedCrop(32),
RandomHorizontalFlip(p=0.5), RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
RandomGrayscale(p=0.2), ToTensor(), Normalize(mean, std); each item is a pair of views of one
image (the demo's CIFAR10Pair). Images are in-memory uint8 arrays, as torchvision's CIFAR10 keeps
them, turned into PIL images per item.

Prints one JSON line: {"pairs_per_sec": ..., ...}.
"""

import argparse
import json
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]


class PairDataset(Dataset):
    def __init__(self, images, transform):
        self.images = images
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        img = Image.fromarray(self.images[index])
        return self.transform(img), self.transform(img)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5120)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, size=(args.images, args.size, args.size, 3), dtype=np.uint8)
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(args.size),
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
        ]
    )
    loader = DataLoader(
        PairDataset(images, transform),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    # The first batch includes starting the workers: measure from the second one on.
    pairs = 0
    batches = 0
    start = None
    for _ in range(args.epochs):
        for view1, view2 in loader:
            assert view1.shape == view2.shape
            if start is None:
                start = time.perf_counter()
                continue
            pairs += view1.shape[0]
            batches += 1
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "pairs_per_sec": pairs / seconds,
                "pairs": pairs,
                "batches": batches,
                "seconds": seconds,
                "workers": args.workers,
                "batch_size": args.batch_size,
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
