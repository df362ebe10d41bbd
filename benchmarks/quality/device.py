"""Where the quality bench computes (`--device cpu|cuda|auto`), and what that changes.

- `resolve`: the torch device of a --device spec (auto: CUDA when torch sees one, else the CPU).
- `key_part`: what a cache key or a results file adds for the device: nothing on the CPU (every CPU key and output
  stays what the bench wrote before it had a device), {"device": "cuda"} on a GPU. A GPU run's images and
  accuracies are not bit-identical to a CPU run's (float rounding over 30 sampling steps and thousands of training
  steps, cuDNN's TF32 convolutions, the augmentation noise drawn on the GPU: `DeviceAugment`), so a GPU run never
  reuses a CPU run's cache entry nor the other way round; paired comparisons hold within one device kind.
- `DeviceAugment`: the downstream augmentation on a CUDA device: geometry and blur exactly as
  `higfa.training.Augment` draws them (per-sample parameters from the run's CPU batch generator), the per-pixel
  noise drawn on the device from its own seeded generator instead of the CPU (the CPU path is `Augment` itself).
- `setup` / `pool_context`: cuDNN deterministic (a rerun on the same GPU gives the same numbers), and `spawn`
  worker processes for --jobs on CUDA (a forked process cannot use CUDA).
"""

from __future__ import annotations

import dataclasses

import torch

from higfa.training import Augment


def resolve(spec: str | torch.device) -> torch.device:
    """The torch device of a --device spec: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available, else the CPU)."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {spec}: use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {spec}: the quality bench runs on cpu or cuda; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: torch sees no CUDA device on this machine; use --device cpu (or auto)")
    return dev


def of(args) -> torch.device:
    """The device of a run's arguments (`args.device`, set by run.main; absent: the CPU, as before the option)."""
    return resolve(getattr(args, "device", None) or "cpu")


def key_part(device: str | torch.device | None) -> dict:
    """What a cache key adds for `device`: {} on the CPU (keys as before), {"device": "cuda"} on any CUDA device
    (the GPU model is recorded in the results' settings, not in the keys: runs of one key on an H100 and an H200
    differ by float rounding only)."""
    dev = resolve(device or "cpu")
    return {} if dev.type == "cpu" else {"device": dev.type}


def describe(device: torch.device) -> str:
    """The device in words for the results' settings: "cuda (NVIDIA H100 80GB HBM3)"."""
    if device.type != "cuda":
        return device.type
    return f"cuda ({torch.cuda.get_device_name(device)})"


def setup(device: torch.device, threads: int | None = None) -> None:
    """A process's torch settings for the bench on `device`: `threads` CPU threads (None: unchanged); on CUDA,
    cuDNN in deterministic mode without autotuning (a rerun on the same GPU repeats its numbers)."""
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def pool_context(device: torch.device):
    """The multiprocessing context of --jobs worker processes: `spawn` on CUDA (CUDA cannot be used after a fork),
    None (the platform's default, fork on Linux, as before) on the CPU."""
    if device.type == "cpu":
        return None
    import multiprocessing

    return multiprocessing.get_context("spawn")


class DeviceAugment:
    """`augment` ([B,3,H,W] in [0,1] on a CUDA device) with its per-pixel noise drawn on the device. Geometry, flip
    and blur are `augment`'s own code with their per-sample parameters from the CPU batch generator, as on the CPU;
    the noise (σ per sample from [0, augment.noise], then N(0, σ²) per pixel) comes from a generator on the device
    seeded with `seed`. Why: on the CPU path every training step draws B·3·H·W normals on the CPU and copies them to
    the device (a host-side cost as large as a small network's whole GPU step). Same distribution, another stream."""

    def __init__(self, augment: Augment, device: torch.device, seed: int):
        self.base = dataclasses.replace(augment, noise=0.0)
        self.noise = float(augment.noise)
        self.generator = torch.Generator(device).manual_seed(int(seed))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # `base` ends with a clamp to [0, 1]: geometry (bilinear, reflected borders) and blur (a convex kernel) keep
        # [0, 1] images inside it, so noise after that clamp is Augment's noise after its geometry and blur.
        x = self.base(images, generator)
        if self.noise <= 0:
            return x
        b = x.shape[0]
        sigma = torch.rand(b, 1, 1, 1, generator=self.generator, device=x.device, dtype=x.dtype) * self.noise
        return (x + sigma * torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)).clamp(0, 1)


def augment_for(augment: Augment, device: torch.device, seed: int):
    """The augmentation a downstream run on `device` uses: `augment` itself on the CPU (unchanged), `DeviceAugment`
    on CUDA (its noise generator seeded from the run's seed)."""
    return augment if device.type == "cpu" else DeviceAugment(augment, device, seed)


def to_device(images, device: torch.device):
    """uint8 images [N,H,W,3] (numpy) as they are on the CPU; on CUDA, a uint8 tensor on the device (the exact
    values: `higfa.training` converts each batch to float where it finds it, so the per-step host-to-device copy
    and conversion are gone)."""
    if device.type == "cpu":
        return images
    return torch.as_tensor(images).to(device)
