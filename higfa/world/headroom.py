"""A world's headroom on real images alone: a CNN on k real images per species, its accuracy on the test split.

    python -m higfa.world.headroom --world finebirds --arch vgg --shots 10 40 --steps 500

The cheap check that chose finebirds' difficulty (docs/world.md "finebirds"): no diffusion, only the generator.
A world has headroom when a strong network on 10 images per species is well below its accuracy on 40. The
`vgg` network is a plain 6-convolution CNN (0.44 M parameters for 48 species: BatchNorm, ReLU, max-pooling,
global average pooling, dropout 0.2); any other name is a timm architecture. Training is the project's
`train_classifier` recipe (AdamW 3e-3 cosine, batch 64, flips/shift/scale/rotation); the test accuracy is logged
at each quarter of the steps (the curve says whether it is still climbing). One torch thread by default.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from ..classifier import Classifier, build_classifier
from ..training import Augment, train_classifier
from .catalog import WORLDS, make_world


def vgg(num_classes: int) -> nn.Sequential:
    """A plain CNN for 64 px images: 6 conv-BN-ReLU layers (32..192 channels), 4 max-pools, GAP, dropout, linear."""
    layers: list[nn.Module] = []
    c = 3
    for width, pool in ((32, True), (48, False), (64, True), (96, False), (128, True), (192, True)):
        layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c, num_classes))


def headroom(world_name: str, arch: str, shots: list[int], steps: int, test_per_class: int = 10, seed: int = 0,
             log=lambda msg: print(msg, flush=True)) -> dict:
    """{shots: {"accuracy", "curve", "seconds"}}: `arch` trained on the first k `train` images per species."""
    world = make_world(world_name)
    test = world.split("test", test_per_class)
    pool = world.split("train", max(shots))
    out = {}
    for k in shots:
        keep = np.concatenate([pool.of_class(c)[:k] for c in range(world.num_classes)])
        torch.manual_seed(seed)
        if arch == "vgg":
            clf = Classifier(vgg(world.num_classes), world.class_names, world.image_size, (0.5,) * 3, (0.5,) * 3, "vgg")
        else:
            clf = build_classifier(arch, world.class_names, world.image_size, mean=(0.5,) * 3, std=(0.5,) * 3)
        started = time.perf_counter()
        r = train_classifier(clf, pool.images[keep], pool.labels[keep], steps=steps, seed=seed + 1, augment=Augment(),
                             eval_images=test.images, eval_labels=test.labels, eval_every=max(1, steps // 4))
        curve = [round(h["accuracy"], 3) for h in r.history if "accuracy" in h]
        out[k] = {"accuracy": curve[-1], "curve": curve, "seconds": round(time.perf_counter() - started, 1)}
        log(f"{world_name} {arch} {k} per species, {steps} steps: test accuracy {curve[-1]} (curve {curve})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m higfa.world.headroom", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="finebirds", choices=WORLDS)
    p.add_argument("--arch", default="vgg", help="vgg, or a timm architecture (e.g. test_resnet)")
    p.add_argument("--shots", type=int, nargs="+", default=[10, 40])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(headroom(args.world, args.arch, args.shots, args.steps, args.test_per_class), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
