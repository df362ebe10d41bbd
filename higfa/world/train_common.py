"""What every training stage of the world shares: the config, logging, the LR schedule, fp16 saving."""

from __future__ import annotations

import inspect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..files import atomic_write
from ..training import to_tensor


@dataclass(frozen=True)
class TrainConfig:
    world: str = "tinybirds"  # catalog.WORLDS; `for_world` applies that world's defaults (WORLD_DEFAULTS)
    seed: int = 0
    world_seed: int = 0
    threads: int = 1  # the CPU is shared; more threads than free cores slows torch down a lot
    latent_channels: int = 8  # the VAE's latent (architecture.with_latent_channels); finebirds: 16
    # VAE
    vae_steps: int = 800
    vae_batch: int = 64  # crops
    vae_crop: int = 32
    vae_lr: float = 2e-3
    vae_per_class: int = 150
    vae_marking_weight: float = 4.0  # extra L1 weight on the marking regions: the decoder must draw them
    vae_kl: float = 1e-5
    vae_init_logvar: float = -6.0
    # VAE decoder fine-tuning, encoder frozen (train_vae_decoder)
    vae_decoder_steps: int = 1000
    vae_decoder_lr: float = 1e-3
    vae_decoder_marking_weight: float = 8.0
    vae_decoder_part_weight: float = 8.0  # the same extra weight on the thin parts (legs): a blurry decoder drops them
    # diffusion (text encoder + UNet + ControlNet, jointly)
    diffusion_steps: int = 1400
    diffusion_batch: int = 32
    diffusion_lr: float = 6e-4
    diffusion_per_class: int = 400
    text_dropout: float = 0.15  # prompt replaced by "" (CFG)
    contour_dropout: float = 0.3  # ControlNet not run (CFG on the contour, and the `cfg` preset)
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.995
    # more diffusion training from the diffusion stage's weights (warm restart; see train_diffusion_more)
    diffusion_more_steps: int = 4000
    diffusion_more_lr: float = 4e-4
    checkpoint_every: int = 200  # VAE, diffusion, classifier stages: steps between resumable checkpoints
    # classifiers
    guidance_shots: int = 10
    guidance_steps: int = 500
    guidance_arch: str = "test_resnet"
    oracle_per_class: int = 200
    oracle_steps: int = 700
    oracle_arch: str = "resnet10t"
    oracle_kwargs: dict = field(default_factory=lambda: {"channels": [24, 48, 96, 192]})
    # The oracle's augmentation besides the geometric one: Gaussian blur σ up to `oracle_blur` px on half of each
    # batch (training.Augment). tinybirds: 0. finebirds: 1.0, because its oracle trained on crisp renders only read
    # 0.58 of real test images blurred by σ = 1 px (0.97 at 0.7 px): it measured the VAE's and the sampler's softer
    # edges, not whether the markings were there.
    oracle_blur: float = 0.0




# Each world's own settings over TrainConfig's (which are tinybirds'). finebirds has 3x the species, thinner
# markings and more nuisance: more VAE and decoder steps, per-class counts that keep the image pools near tinybirds'
# sizes, 6000 more diffusion steps (tinybirds: 4000; its images hold more detail: clutter, thin markings), and an
# oracle trained on more images for longer (it must reach 0.99 on real test images). About 2.3 h of CPU in all.
# Its stages run the classifiers first: the oracle measures the VAE's ceiling right after `vae_decoder` (`ceiling`
# in training.json), before the diffusion stages spend most of the budget.
WORLD_DEFAULTS: dict[str, dict] = {
    "tinybirds": {},
    "finebirds": dict(latent_channels=16, oracle_blur=1.0, vae_steps=1000, vae_per_class=60, vae_decoder_steps=2000,
                      diffusion_per_class=150, diffusion_more_steps=6000, oracle_per_class=500, oracle_steps=3000,
                      checkpoint_every=150),
}


def for_world(world: str, **changes) -> TrainConfig:
    """TrainConfig for `world`: its WORLD_DEFAULTS, then `changes`."""
    if world not in WORLD_DEFAULTS:
        raise ValueError(f"unknown world {world!r}: choose one of {sorted(WORLD_DEFAULTS)}")
    return TrainConfig(world=world, **{**WORLD_DEFAULTS[world], **changes})


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cosine_lr(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def images_pm1(images: np.ndarray) -> torch.Tensor:
    return to_tensor(images) * 2 - 1


def save_fp16(model, folder: Path) -> None:
    """save_pretrained in float16, without the `_name_or_path` a model loaded from another folder carries
    (it would write that folder, e.g. a temporary one, into the shipped config), nor keys the class's
    __init__ does not take (AutoencoderTiny registers `block_out_channels` for pipelines, then warns on load
    that it is unexpected; __init__ registers it again)."""
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    cfg = folder / "config.json"
    data = json.loads(cfg.read_text())
    from diffusers import ModelMixin

    # transformers' models take one `config` argument: only a diffusers model's keys are its __init__'s.
    accepted = inspect.signature(type(model).__init__).parameters if isinstance(model, ModelMixin) else data
    extra = [k for k in data if k == "_name_or_path" or (not k.startswith("_") and k not in accepted)]
    if extra:
        cfg.write_text(json.dumps({k: v for k, v in data.items() if k not in extra}, indent=2, sort_keys=True)
                       + "\n")


def load_vae(out: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(out / "vae", torch_dtype=torch.float32).eval().requires_grad_(False)


def finish_checkpoint(path: Path) -> None:
    """A stage that finished no longer needs its checkpoint (the weights are saved)."""
    path.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()



class StageCheckpoint:
    """A stage's resumable state, `<out>/checkpoints/<stage>.pt`, written atomically every `every` steps (0: never)
    and removed when the stage finishes. A run cut short resumes from the last one with the same batches (the
    state holds the batch generator and the rest of its epoch order)."""

    def __init__(self, out: Path, stage: str, every: int):
        self.path, self.every = out / "checkpoints" / f"{stage}.pt", int(every)

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, weights_only=True)  # tensors and plain containers only: no code runs
        log(f"resumed from {self.path} at step {state['step']}")
        return state

    def save(self, done: int, total: int, state: Callable[[], dict]) -> None:
        """After `done` of `total` steps: save state() when a checkpoint is due (never after the last step)."""
        if self.every > 0 and done % self.every == 0 and done < total:
            atomic_write(self.path, lambda f: torch.save({**state(), "step": done}, f))

    def resume(self, model, opt, gen: torch.Generator, order: torch.Tensor, losses: list) -> tuple:
        """A model + optimiser stage's (order, losses, first step): restored into model, opt and gen from the
        checkpoint when there is one, else the given start (step 0)."""
        if (state := self.load()) is None:
            return order, losses, 0
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        return state["order"], state["losses"], state["step"]

    def save_training(self, done: int, total: int, model, opt, gen: torch.Generator, order: torch.Tensor,
                      losses: list) -> None:
        """`save` of what `resume` restores."""
        self.save(done, total, lambda: {"model": model.state_dict(), "opt": opt.state_dict(),
                                        "gen": gen.get_state(), "order": order, "losses": losses})

    def finish(self) -> None:
        finish_checkpoint(self.path)
