"""Train the built-in world's models from scratch on the CPU, reproducibly by seed.

    python -m higfa.world.train                 # everything, into higfa/world/assets/
    higfa train-world --stages vae diffusion    # some stages (later stages load earlier outputs)

Stages (see docs/world.md for formats and configs):
  vae        AutoencoderKL, 4x down-sampling (64 px image -> 8x16x16 latent), trained on 32 px crops
             (half centred on a marking), marking-weighted L1
  vae_decoder  the VAE's decoder fine-tuned with the encoder frozen (the latent space stays)
  diffusion  CLIPTextModel (word-level tokenizer) + UNet2DConditionModel + ControlNetModel, trained
             jointly on FAMILY prompts only, CFG dropout on text and contour, min-SNR weighting, EMA
  diffusion_more  the same three models trained further from the diffusion stage's EMA weights
             (a warm restart); both diffusion stages checkpoint and resume (out/checkpoints/)
  guidance   the few-shot guidance classifier: timm test_resnet on 10 real images per species
  oracle     the measuring classifier: timm resnet10t (slim), another seed, 200 images per species
  tiny_decoder  the guidance decoder: a TAESD-architecture AutoencoderTiny distilled from the VAE (tiny_decoder.py)

Each stage's settings, seconds and final losses go to `training.json` in the output folder.

Why one file of ~600 lines: it is the world's whole recipe, read top to bottom (config, then one function per
stage in the order `make train-world` runs them); the classifier stages already call the shared
`higfa.training.train_classifier` and the decoder stage lives in tiny_decoder.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..classifier import build_classifier, save_classifier
from ..contour import EdgeDetector
from ..training import Augment, evaluate, to_tensor, train_classifier
from .birds import ASSETS, TinyBirds
from .tiny_decoder import train_tiny_decoder

STAGES = ("vae", "vae_decoder", "diffusion", "diffusion_more", "guidance", "oracle", "tiny_decoder")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    world_seed: int = 0
    threads: int = 1  # the CPU is shared; more threads than free cores slows torch down a lot
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
    checkpoint_every: int = 200  # diffusion stages: steps between resumable checkpoints (out/checkpoints/)
    # classifiers
    guidance_shots: int = 10
    guidance_steps: int = 500
    guidance_arch: str = "test_resnet"
    oracle_per_class: int = 200
    oracle_steps: int = 700
    oracle_arch: str = "resnet10t"
    oracle_kwargs: dict = field(default_factory=lambda: {"channels": [24, 48, 96, 192]})


# ---------------------------------------------------------------------------- model configs
VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(16, 32, 64), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8,
    sample_size=64, mid_block_add_attention=False)
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=16, in_channels=8, out_channels=8, layers_per_block=1, block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
    attention_head_dim=8, norm_num_groups=32)
# The same UNet as ComfyUI's native openaimodel.UNetModel config; keys map with
# comfy.utils.unet_to_diffusers(COMFYUI_UNET_CONFIG) (checked against ComfyUI 0.3.75, docs/world.md).
COMFYUI_UNET_CONFIG: dict[str, Any] = dict(
    image_size=16, in_channels=8, out_channels=8, model_channels=32, num_res_blocks=[1, 1, 1], channel_mult=[1, 2, 4],
    transformer_depth=[0, 1, 1], transformer_depth_output=[0, 0, 1, 1, 1, 1], transformer_depth_middle=1,
    context_dim=64, num_heads=8, num_head_channels=-1, use_linear_in_transformer=False, use_spatial_transformer=True,
    legacy=False, adm_in_channels=None)
CONTROLNET_EMBEDDING = (16, 32, 64)  # 3 stages: the 64 px hint is down-sampled 4x to the latent size
TEXT_CONFIG: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                   max_position_embeddings=16, projection_dim=64)
MAX_TOKENS = 16
SCHEDULER_CONFIG: dict[str, Any] = dict(  # SD 1.x training schedule; DDIM with SD's spacing
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    timestep_spacing="leading")
BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "[UNK]"


def build_tokenizer(families: list[str]):
    """Word-level tokenizer over the template words and FAMILY names only: species words are [UNK].
    Pads with the end token to MAX_TOKENS (as SD 1.x's CLIP tokenizer does)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [UNK, BOS, "<|pad_unused|>", EOS, "a", "an", "photo", "of", "the", *families]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]),
                                                                                               (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=EOS,
                                   model_max_length=MAX_TOKENS)


def build_text_encoder(tokenizer, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG)
    torch.manual_seed(seed)
    return CLIPTextModel(cfg)


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                     return_tensors="pt").input_ids


# ---------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _images_pm1(images: np.ndarray) -> torch.Tensor:
    return to_tensor(images) * 2 - 1


# Stages that start from the weights already in the folder (-> the stage that made those weights): running one
# again trains further, so its record keeps the earlier runs (the weights' history; the totals count them). Every
# other stage starts from scratch, and running it drops the records of the fine-tunes of the weights it replaced.
FINE_TUNE_STAGES = {"vae_decoder": "vae", "diffusion_more": "diffusion"}


def _record(out: Path, stage: str, info: dict[str, Any]) -> None:
    path = out / "training.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    stages = data.setdefault("stages", {})
    if stage in FINE_TUNE_STAGES and stage in stages:
        earlier = dict(stages[stage])
        info = {**info, "earlier_runs": [*earlier.pop("earlier_runs", []), earlier]}
    for tuned, base in FINE_TUNE_STAGES.items():
        if base == stage:
            stages.pop(tuned, None)  # those weights are gone
    stages[stage] = info
    data["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                       "processor": platform.processor() or platform.machine()}
    for key in ("stage_wall_seconds", "stage_cpu_seconds"):
        data["total_" + key[6:]] = round(sum(r.get(key, 0.0) for s in stages.values()
                                             for r in (s, *s.get("earlier_runs", ()))), 1)
    path.write_text(json.dumps(data, indent=1))


# ---------------------------------------------------------------------------- stages
def _crops(x: torch.Tensor, w: torch.Tensor, masks: torch.Tensor, size: int, gen: torch.Generator,
           focus: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Random size×size crops (corners on the 4-px latent grid), centred on a marking for a `focus`
    share of them, randomly flipped. The VAE is fully convolutional, so crops train it for whole
    images at a quarter of the cost, and the focus spends that on the small details."""
    B, _, H, W = x.shape
    xs, ws = [], []
    for b in range(B):
        ys, xs_ = torch.nonzero(masks[b], as_tuple=True)
        if len(ys) and float(torch.rand(1, generator=gen)) < focus:
            k = int(torch.randint(len(ys), (1,), generator=gen))
            jitter = torch.randint(-size // 4, size // 4 + 1, (2,), generator=gen)
            top, left = int(ys[k]) - size // 2 + int(jitter[0]), int(xs_[k]) - size // 2 + int(jitter[1])
        else:
            top, left = (int(v) for v in torch.randint(0, H - size + 1, (2,), generator=gen))
        top = min(max(0, top // 4 * 4), H - size)
        left = min(max(0, left // 4 * 4), W - size)
        cx, cw = x[b, :, top:top + size, left:left + size], w[b, :, top:top + size, left:left + size]
        if float(torch.rand(1, generator=gen)) < 0.5:
            cx, cw = cx.flip(-1), cw.flip(-1)
        xs.append(cx)
        ws.append(cw)
    return torch.stack(xs), torch.stack(ws)


def _vae_batch(cfg: TrainConfig, x_all: torch.Tensor, w_all: torch.Tensor, masks: torch.Tensor, order: torch.Tensor,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The next `vae_batch` crops (and their L1 weights) from a shuffled epoch order; returns the rest of it."""
    if len(order) < cfg.vae_batch:
        order = torch.cat([order, torch.randperm(len(x_all), generator=gen)])
    idx, order = order[:cfg.vae_batch], order[cfg.vae_batch:]
    x, w = _crops(x_all[idx], w_all[idx], masks[idx], cfg.vae_crop, gen)
    return x, w, order


def train_vae(cfg: TrainConfig, world: TinyBirds, out: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    data = world.split("train", cfg.vae_per_class, masks=True)
    x_all = _images_pm1(data.images)
    masks = torch.as_tensor(data.masks)
    w_all = torch.as_tensor(data.loss_weights(cfg.vae_marking_weight))
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**VAE_CONFIG).train()
    with torch.no_grad():
        # Start with a nearly deterministic posterior (σ ≈ 0.05): with σ ≈ 1 at init the decoder
        # spends its short training learning to ignore latent noise, and reconstructions blur.
        vae.quant_conv.bias[VAE_CONFIG["latent_channels"]:] = cfg.vae_init_logvar
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    started, order, losses = time.perf_counter(), torch.empty(0, dtype=torch.long), []
    for step in range(cfg.vae_steps):
        x, w, order = _vae_batch(cfg, x_all, w_all, masks, order, gen)
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * _cosine(step, cfg.vae_steps, 30)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        l1 = ((rec - x).abs() * w).mean()
        loss = l1 + cfg.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(l1.detach()))
        if (step + 1) % 50 == 0 or step == 0:
            _log(f"vae step {step + 1}/{cfg.vae_steps} weighted L1 {np.mean(losses[-50:]):.4f}")
    seconds = time.perf_counter() - started
    vae.eval()
    # SD's convention: latents are multiplied by scaling_factor = 1 / std so the UNet sees unit variance.
    with torch.no_grad():
        mean = torch.cat([vae.encode(x_all[i:i + 256]).latent_dist.mean for i in range(0, min(len(x_all), 1024), 256)])
        recon_err = float((vae.decode(mean[:256]).sample - x_all[:256]).abs().mean())
    scale = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=round(scale, 5))
    _save_fp16(vae, out / "vae")
    info = {"seconds": round(seconds, 1), "steps": cfg.vae_steps, "batch": cfg.vae_batch, "images": len(x_all),
            "final_weighted_l1": round(float(np.mean(losses[-50:])), 4), "recon_l1_pm1": round(recon_err, 4),
            "scaling_factor": round(scale, 5)}
    _log(f"vae done in {seconds:.0f} s: {info}")
    return info


def train_vae_decoder(cfg: TrainConfig, world: TinyBirds, out: Path) -> dict[str, Any]:
    """Fine-tune the VAE's decoder (and post-quant conv) with the encoder frozen: the latent space the
    diffusion model lives in does not change, so this stage can run before or after the diffusion
    stages. The `vae` stage's short budget leaves the decoder the weak half: the world oracle finds
    the species in 91 % of its reconstructions, and 99 % after this stage (docs/world.md)."""
    vae = _load_vae(out)
    data = world.split("train", cfg.vae_per_class, masks=True)
    x_all = _images_pm1(data.images)
    masks = torch.as_tensor(data.masks | data.parts)  # crops centre on a marking or a leg
    w_all = torch.as_tensor(data.loss_weights(cfg.vae_decoder_marking_weight, cfg.vae_decoder_part_weight))
    with torch.no_grad():
        probe = x_all[:256]
        before = float((vae.decode(vae.encode(probe).latent_dist.mean).sample - probe).abs().mean())
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    opt = torch.optim.AdamW(params, lr=cfg.vae_decoder_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 12)
    started, order, losses = time.perf_counter(), torch.empty(0, dtype=torch.long), []
    for step in range(cfg.vae_decoder_steps):
        x, w, order = _vae_batch(cfg, x_all, w_all, masks, order, gen)
        for g in opt.param_groups:
            g["lr"] = cfg.vae_decoder_lr * _cosine(step, cfg.vae_decoder_steps, 20)
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        l1 = ((vae.decode(z).sample - x).abs() * w).mean()
        opt.zero_grad(set_to_none=True)
        l1.backward()
        opt.step()
        losses.append(float(l1.detach()))
        if (step + 1) % 50 == 0 or step == 0:
            _log(f"vae_decoder step {step + 1}/{cfg.vae_decoder_steps} weighted L1 {np.mean(losses[-50:]):.4f}")
    seconds = time.perf_counter() - started
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        after = float((vae.decode(vae.encode(probe).latent_dist.mean).sample - probe).abs().mean())
    _save_fp16(vae, out / "vae")
    info = {"seconds": round(seconds, 1), "steps": cfg.vae_decoder_steps, "batch": cfg.vae_batch,
            "images": len(x_all), "final_weighted_l1": round(float(np.mean(losses[-50:])), 4),
            "recon_l1_pm1_before": round(before, 4), "recon_l1_pm1": round(after, 4)}
    _log(f"vae_decoder done in {seconds:.0f} s: {info}")
    return info


def _save_fp16(model, folder: Path) -> None:
    """save_pretrained in float16, without the `_name_or_path` a model loaded from another folder carries
    (it would write that folder, e.g. a temporary one, into the shipped config)."""
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    cfg = folder / "config.json"
    data = json.loads(cfg.read_text())
    if data.pop("_name_or_path", None) is not None:
        cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _load_vae(out: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(out / "vae", torch_dtype=torch.float32).eval().requires_grad_(False)


def _erase_patches(edges: torch.Tensor, gen: torch.Generator, p: float = 0.5, max_patches: int = 3,
                   size: float = 0.2) -> torch.Tensor:
    """Contour dropout during training: zero up to `max_patches` square patches in half the hints."""
    B, _, H, W = edges.shape
    out = edges.clone()
    for b in range(B):
        if float(torch.rand(1, generator=gen)) >= p:
            continue
        for _ in range(int(torch.randint(1, max_patches + 1, (1,), generator=gen))):
            s = max(2, int(size * H * float(torch.rand(1, generator=gen))))
            y0, x0 = (int(torch.randint(0, max(1, n - s), (1,), generator=gen)) for n in (H, W))
            out[b, :, y0:y0 + s, x0:x0 + s] = 0
    return out


def _diffusion_data(cfg: TrainConfig, world: TinyBirds, out: Path) -> dict[str, Any]:
    """Everything the diffusion stages train on: VAE posteriors of the `train` split, Canny contours,
    tokenised family prompts. The encoder is all that is used of the VAE (the latent space)."""
    vae = _load_vae(out)
    data = world.split("train", cfg.diffusion_per_class)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = _images_pm1(data.images)
        posts = [vae.encode(x[i:i + 256]).latent_dist for i in range(0, len(x), 256)]
        lat_mean, lat_std = torch.cat([p.mean for p in posts]), torch.cat([p.std for p in posts])
    del x, posts
    detector = EdgeDetector()
    edges = torch.from_numpy(np.stack([detector(im)[..., 0] for im in data.images]) > 127)  # [N,H,W] bool
    tokenizer = build_tokenizer(world.family_names)
    d = {"sf": float(vae.config.scaling_factor), "lat_mean": lat_mean, "lat_std": lat_std, "edges": edges,
         "tokenizer": tokenizer, "labels": torch.as_tensor(data.labels),
         "fam_ids": tokenize(tokenizer, [world.prompt(c) for c in range(world.num_classes)]),  # [K,L]
         "empty_ids": tokenize(tokenizer, [""]), "data_seconds": time.perf_counter() - t0}
    _log(f"diffusion data: {len(d['labels'])} latents and contours in {d['data_seconds']:.0f} s")
    return d


def _diffusion_loop(cfg: TrainConfig, d: dict[str, Any], modules: list, steps: int, lr: float, seed: int,
                    checkpoint: Path | None = None) -> dict[str, Any]:
    """Train text encoder + UNet + ControlNet jointly for `steps` steps (cosine LR, EMA), then load the
    EMA weights into `modules`. With `checkpoint`, the state is saved every `cfg.checkpoint_every` steps
    and a run cut short resumes from it with the same batches (the generator state is saved too)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    ab = sched.alphas_cumprod.float()
    params = [p for m in modules for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    B, order, losses, first = cfg.diffusion_batch, torch.empty(0, dtype=torch.long), [], 0
    labels, edges, sf = d["labels"], d["edges"], d["sf"]
    text_encoder, unet, controlnet = modules
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        with torch.no_grad():
            for p, v in zip(params, state["params"]):
                p.copy_(v)
            for e, v in zip(ema, state["ema"]):
                e.copy_(v)
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        order, losses, first = state["order"], state["losses"], state["step"]
        _log(f"resumed from {checkpoint} at step {first}")
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in range(first, steps):
        if len(order) < B:
            order = torch.cat([order, torch.randperm(len(labels), generator=gen)])
        idx, order = order[:B], order[B:]
        for g in opt.param_groups:
            g["lr"] = lr * _cosine(step, steps, 50)
        z0 = (d["lat_mean"][idx] + d["lat_std"][idx] * torch.randn(d["lat_mean"][idx].shape, generator=gen)) * sf
        t = torch.randint(0, len(ab), (B,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        a = ab[t].view(B, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        drop_text = torch.rand(B, generator=gen) < cfg.text_dropout
        ids = torch.where(drop_text[:, None], d["empty_ids"], d["fam_ids"][labels[idx]])
        emb = text_encoder(ids)[0]
        # The first n_ctrl samples get the contour (the batch order is random already).
        n_ctrl = int((torch.rand(B, generator=gen) >= cfg.contour_dropout).sum())
        extra = {}
        if n_ctrl > 0:
            hint = edges[idx[:n_ctrl]].float()[:, None].expand(-1, 3, -1, -1)
            hint = _erase_patches(hint, gen)
            down, mid = controlnet(zt[:n_ctrl], t[:n_ctrl], encoder_hidden_states=emb[:n_ctrl], controlnet_cond=hint,
                                   return_dict=False)
            pad = lambda r, n=n_ctrl: torch.cat([r, r.new_zeros((B - n, *r.shape[1:]))])  # noqa: E731
            extra = {"down_block_additional_residuals": [pad(r) for r in down],
                     "mid_block_additional_residual": pad(mid)}
        pred = unet(zt, t, encoder_hidden_states=emb, **extra).sample
        snr = a.flatten() / (1 - a.flatten())
        weight = snr.clamp(max=cfg.min_snr_gamma) / snr
        loss = (weight * (pred - eps).pow(2).flatten(1).mean(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step == first:
            el, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            n = step + 1 - first
            _log(f"diffusion step {step + 1}/{steps} loss {np.mean(losses[-50:]):.4f} "
                 f"({el / n:.2f} s/step wall, {cpu / n:.2f} s/step CPU)")
        if checkpoint is not None and ((step + 1) % cfg.checkpoint_every == 0) and step + 1 < steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"params": [p.detach() for p in params], "ema": ema, "opt": opt.state_dict(),
                        "gen": gen.get_state(), "order": order, "losses": losses, "step": step + 1}, tmp)
            tmp.replace(checkpoint)  # atomic: a kill mid-write keeps the previous checkpoint
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    for m in modules:
        m.eval()
    return {"seconds": round(time.perf_counter() - started, 1), "steps": steps, "resumed_at": first,
            "batch": B, "images": len(labels), "final_loss": round(float(np.mean(losses[-50:])), 4)}


def _save_diffusion(out: Path, tokenizer, modules: list) -> None:
    from diffusers import DDIMScheduler

    text_encoder, unet, controlnet = modules
    _save_fp16(text_encoder, out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    _save_fp16(unet, out / "unet")
    _save_fp16(controlnet, out / "controlnet")
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    _write_model_index(out)


def train_diffusion(cfg: TrainConfig, world: TinyBirds, out: Path) -> dict[str, Any]:
    from diffusers import ControlNetModel, UNet2DConditionModel

    d = _diffusion_data(cfg, world, out)
    text_encoder = build_text_encoder(d["tokenizer"], cfg.seed + 1).train()
    torch.manual_seed(cfg.seed + 2)
    unet = UNet2DConditionModel(**UNET_CONFIG).train()
    torch.manual_seed(cfg.seed + 3)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING).train()
    modules = [text_encoder, unet, controlnet]
    info = _diffusion_loop(cfg, d, modules, cfg.diffusion_steps, cfg.diffusion_lr, cfg.seed + 4,
                           out / "checkpoints" / "diffusion.pt")
    _save_diffusion(out, d["tokenizer"], modules)
    _finish_checkpoint(out / "checkpoints" / "diffusion.pt")
    info["data_seconds"] = round(d["data_seconds"], 1)
    _log(f"diffusion done: {info}")
    return info


def train_diffusion_more(cfg: TrainConfig, world: TinyBirds, out: Path) -> dict[str, Any]:
    """Continue the diffusion stage's models (EMA weights) for `diffusion_more_steps` with a fresh
    cosine schedule (a warm restart): the budget can grow without redoing the first stage, and
    `make train-world` still reproduces the shipped weights (both stages, fixed seeds)."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    d = _diffusion_data(cfg, world, out)
    f32 = dict(torch_dtype=torch.float32)
    modules = [CLIPTextModel.from_pretrained(out / "text_encoder", **f32).train(),
               UNet2DConditionModel.from_pretrained(out / "unet", **f32).train(),
               ControlNetModel.from_pretrained(out / "controlnet", **f32).train()]
    info = _diffusion_loop(cfg, d, modules, cfg.diffusion_more_steps, cfg.diffusion_more_lr, cfg.seed + 5,
                           out / "checkpoints" / "diffusion_more.pt")
    _save_diffusion(out, d["tokenizer"], modules)
    _finish_checkpoint(out / "checkpoints" / "diffusion_more.pt")
    info["data_seconds"] = round(d["data_seconds"], 1)
    _log(f"diffusion_more done: {info}")
    return info


def _finish_checkpoint(path: Path) -> None:
    """A stage that finished no longer needs its checkpoint (the weights are saved)."""
    path.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()


def _write_model_index(out: Path) -> None:
    import diffusers

    index = {"_class_name": "StableDiffusionControlNetPipeline", "_diffusers_version": diffusers.__version__,
             "controlnet": ["diffusers", "ControlNetModel"], "feature_extractor": [None, None],
             "image_encoder": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=1))


def _classifier_stage(cfg: TrainConfig, world: TinyBirds, out: Path, name: str) -> dict[str, Any]:
    """The guide or the oracle, trained by `higfa.training.train_classifier` exactly as
    `higfa train-classifier --data builtin:<split>:<n> --steps S --seed SEED ...` trains it (tests check
    that the two give the same weights), with its sidecar's provenance."""
    from ..jobs.labelled import provenance
    from ..training import predict

    guidance = name == "guidance"
    if guidance:
        split, per_class = "fewshot", cfg.guidance_shots
        arch, kwargs, steps, seed = cfg.guidance_arch, {}, cfg.guidance_steps, cfg.seed + 20
        augment = Augment(noise=0.03, blur=1.0)  # mild noise/blur: it also sees blurry x̂0 during guidance
    else:
        split, per_class = "train", cfg.oracle_per_class
        arch, kwargs, steps, seed = cfg.oracle_arch, dict(cfg.oracle_kwargs), cfg.oracle_steps, cfg.seed + 30
        augment = Augment()
    data = world.split(split, per_class)
    test = world.split("test", 50)
    torch.manual_seed(seed)
    clf = build_classifier(arch, world.class_names, world.image_size, mean=(0.5,) * 3, std=(0.5,) * 3, **kwargs)
    result = train_classifier(clf, data.images, data.labels, steps=steps, seed=seed, augment=augment,
                              callback=lambda s, loss: _log(f"{name} step {s}/{steps} loss {loss:.3f}")
                              if s % 100 == 0 else None)
    ev = evaluate(result.classifier, test.images, test.labels)
    fam = world.family_labels()
    pred = predict(result.classifier, test.images).argmax(1).numpy()
    result.classifier.provenance = provenance(
        f"builtin:{split}:{per_class}", world.class_names, ev, command=f"higfa train-world --stages {name}",
        val_data="builtin:test", train_images=len(data), steps=steps, seed=seed)
    save_classifier(result.classifier.half(), out / name)
    info = {"seconds": round(result.seconds, 1), "steps": steps, "architecture": arch, "model_kwargs": kwargs,
            "train_images": len(data), "test_accuracy": round(ev["accuracy"], 4),
            "test_family_accuracy": round(float((fam[pred] == fam[test.labels]).mean()), 4)}
    _log(f"{name} done in {result.seconds:.0f} s: {info}")
    return info


def run(cfg: TrainConfig, stages: list[str], out: Path = ASSETS) -> dict[str, Any]:
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown training stages {unknown}: choose from {list(STAGES)}")
    torch.set_num_threads(max(1, cfg.threads))
    out.mkdir(parents=True, exist_ok=True)
    world = TinyBirds(seed=cfg.world_seed)
    fns = {"vae": train_vae, "vae_decoder": train_vae_decoder, "diffusion": train_diffusion,
           "diffusion_more": train_diffusion_more,
           "guidance": lambda c, w, o: _classifier_stage(c, w, o, "guidance"),
           "oracle": lambda c, w, o: _classifier_stage(c, w, o, "oracle"), "tiny_decoder": train_tiny_decoder}
    results = {}
    for stage in [s for s in STAGES if s in stages]:
        _log(f"stage {stage}")
        wall, cpu = time.perf_counter(), time.process_time()
        info = fns[stage](cfg, world, out)
        # Wall time depends on who else uses the machine; CPU time of this process does not (much).
        info["stage_wall_seconds"] = round(time.perf_counter() - wall, 1)
        info["stage_cpu_seconds"] = round(time.process_time() - cpu, 1)
        info["threads"] = cfg.threads
        info["config"] = {k: v for k, v in asdict(cfg).items() if k.startswith(stage) or k in ("seed", "world_seed")}
        _record(out, stage, info)
        results[stage] = info
    _write_world_json(cfg, world, out)
    return results


def _write_world_json(cfg: TrainConfig, world: TinyBirds, out: Path) -> None:
    det = EdgeDetector()
    info = {"format": 1, "world": {"seed": cfg.world_seed, "image_size": world.image_size,
                                   "class_names": world.class_names, "families": world.family_names,
                                   "species_family": [s.family for s in world.species],
                                   "prompt_template": "a photo of a {family}"},
            "edge_detector": {"method": det.method, "low": det.low, "high": det.high, "blur": det.blur},
            "latent": {"channels": VAE_CONFIG["latent_channels"], "downsample": 4, "size": world.image_size // 4},
            "guidance_classifier": "guidance.safetensors", "oracle_classifier": "oracle.safetensors",
            "comfyui_unet_config": COMFYUI_UNET_CONFIG, "train_seed": cfg.seed}
    (out / "world.json").write_text(json.dumps(info, indent=1))


# ---------------------------------------------------------------------------- CLI
def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages to run, in order")
    p.add_argument("--out", type=Path, default=ASSETS, help="output folder (default: the shipped assets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch CPU threads")
    for f in ("vae_steps", "diffusion_steps", "guidance_steps", "oracle_steps"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(TrainConfig, f))
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override any TrainConfig field, e.g. --set diffusion_per_class=50 vae_lr=1e-3")


def _config(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    changes: dict[str, Any] = dict(seed=args.seed, threads=args.threads, vae_steps=args.vae_steps,
                                   diffusion_steps=args.diffusion_steps, guidance_steps=args.guidance_steps,
                                   oracle_steps=args.oracle_steps)
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in fields or not value:
            raise ValueError(f"--set {item!r}: use FIELD=VALUE with FIELD one of {sorted(fields)}")
        default = getattr(TrainConfig(), name)
        changes[name] = json.loads(value) if isinstance(default, (dict, list)) else type(default)(value)
    return TrainConfig(**changes)


def register(sub) -> None:
    p = sub.add_parser("train-world", help="train the built-in tiny world's models (CPU, about 2 h; resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=lambda a: (run(_config(a), a.stages, a.out), 0)[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m higfa.world.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    args = p.parse_args(argv)
    run(_config(args), args.stages, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
