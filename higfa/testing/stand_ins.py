"""Tiny random-init stand-ins in the real model formats (diffusers UNet/ControlNet/VAE, timm).

Used by tests and benchmarks: same code paths as SD 1.5 + ControlNet + a timm classifier, at a
size a 2-core CPU runs in milliseconds. Deterministic per seed. Latents are 4×h×w; the VAE
up-samples 8× like SD's.
"""

from __future__ import annotations

import torch

from ..classifier import Classifier, build_classifier
from ..backends.denoiser import DiffusersDenoiser, vae_decode
from ..sigmas import NoiseSchedule

CONTEXT_DIM = 32


def tiny_unet(seed: int = 0, sample_size: int = 8):
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=CONTEXT_DIM,
            attention_head_dim=8, norm_num_groups=8).eval()


def tiny_controlnet(unet, seed: int = 1):
    """ControlNet copied from the UNet; its zero convolutions get small random weights so the
    contour has an effect (a trained ControlNet's would not be zero either)."""
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32)).eval()
        with torch.no_grad():
            for block in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
                block.weight.normal_(0, 0.05)
            cn.controlnet_cond_embedding.conv_out.weight.normal_(0, 0.05)
    return cn


def tiny_vae(seed: int = 2, scaling_factor: float = 0.18215):
    """scaling_factor: SD 1.x's 0.18215 (diffusers' default), SDXL's 0.13025."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 32, 32),
                             layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
                             scaling_factor=scaling_factor).eval()


def tiny_classifier(num_classes: int = 4, input_size: int = 32, seed: int = 3,
                    architecture: str = "test_resnet") -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_classifier(architecture, [f"class_{i}" for i in range(num_classes)], input_size,
                                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).eval()


class TinyStack:
    """A complete tiny SD-style stack: denoiser (UNet + ControlNet + two text embeddings), decode,
    classifier. `latent_size` h = w; images are 8·h pixels."""

    def __init__(self, seed: int = 0, latent_size: int = 8, num_classes: int = 4):
        self.latent_size = latent_size
        self.unet = tiny_unet(seed, latent_size)
        self.controlnet = tiny_controlnet(self.unet, seed + 1)
        self.vae = tiny_vae(seed + 2)
        self.classifier = tiny_classifier(num_classes, 8 * latent_size, seed + 3)
        g = torch.Generator().manual_seed(seed + 4)
        self.embeddings = {"cond": torch.randn(1, 7, CONTEXT_DIM, generator=g),
                           "uncond": torch.zeros(1, 7, CONTEXT_DIM)}
        self.contour = (torch.rand(1, 3, 8 * latent_size, 8 * latent_size, generator=g) > 0.9).float()
        self.noise_schedule = NoiseSchedule.scaled_linear()
        self.denoiser = DiffusersDenoiser(self.unet, self.embeddings, self.noise_schedule, self.controlnet,
                                          self.contour)
        self.decode = vae_decode(self.vae)

    def noise(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 4, self.latent_size, self.latent_size, generator=g)


class Confident(torch.nn.Module):
    """A 4-class classifier sure (p ≈ 1) or unsure (p ≈ 1/4) of class `k` for any image [B,3,H,W] -> logits [B,4],
    yet differentiable: the target logit depends on the image, so log p has a non-zero gradient."""

    def __init__(self, k: int, sure: bool = True):
        super().__init__()
        self.k, self.sure = k, sure

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(torch.tensor(self.k), 4).float()
        return onehot * (image.mean((1, 2, 3))[:, None] * 0.1 + (20.0 if self.sure else 0.0))
