"""The guidance decoder outside ComfyUI: `load_guidance_vae` (TAESD files and diffusers folders), the trace's
`guidance_decoder`, and the built-in world's shipped tiny decoder."""

from __future__ import annotations

import torch
from torch import nn

from higfa.backends.denoiser import load_guidance_vae, vae_decode


def taesd_decoder(latent_channels: int = 4) -> nn.Sequential:
    """TAESD's decoder as madebyollin/taesd (and ComfyUI's comfy/taesd/taesd.py) define it: the file format is
    this Sequential's state dict."""

    class Clamp(nn.Module):
        def forward(self, x):
            return torch.tanh(x / 3) * 3

    class Block(nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(n_in, n_out, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(n_out, n_out, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(n_out, n_out, 3, padding=1))
            self.skip = nn.Identity()
            self.fuse = nn.ReLU()

        def forward(self, x):
            return self.fuse(self.conv(x) + self.skip(x))

    def conv(n_in, n_out, **kw):
        return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)

    def stage():
        return [Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False)]

    return nn.Sequential(Clamp(), conv(latent_channels, 64), nn.ReLU(), *stage(), *stage(), *stage(), Block(64, 64),
                         conv(64, 3))


def test_a_taesd_decoder_file_decodes_as_taesd_does(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = taesd_decoder().eval()
    path = tmp_path / "taesd_decoder.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    vae = load_guidance_vae(path)
    assert type(vae).__name__ == "AutoencoderTiny" and not any(p.requires_grad for p in vae.parameters())
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = ref(z)  # TAESD's decoder output is already in [0, 1]; input: the UNet's latent
        got = vae_decode(vae)(z)
    assert got.shape == (2, 3, 64, 64)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_diffusers_folders_and_bad_paths(tmp_path):
    import pytest
    from diffusers import AutoencoderTiny

    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1)).save_pretrained(tmp_path / "pipe" / "vae")
    assert type(load_guidance_vae(tmp_path / "pipe")).__name__ == "AutoencoderTiny"  # a pipeline's vae/ too
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_guidance_vae(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_guidance_vae(tmp_path)
    from safetensors.torch import save_file

    save_file({"decoder.conv_in.weight": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a TAESD decoder file"):
        load_guidance_vae(tmp_path / "x.safetensors")


def test_the_trace_names_the_decoder_that_guided(tiny_world):
    from higfa.guide import Guide
    from higfa.sampler import sample
    from higfa.schedule import Schedule
    from higfa.trace import Trace

    clf = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4))
    sigmas = tiny_world.noise_schedule.sample_sigmas(4)
    guide = Guide(Schedule(stage_boundary=0.3), clf, tiny_world.decode, target=[1, 1], decoder_name="guidance_vae (X)")
    trace = sample(tiny_world.denoiser, tiny_world.noise(2, seed=0), sigmas, guide).trace
    assert trace.guidance_decoder == "guidance_vae (X)"
    assert Trace.from_json(trace.to_json()).guidance_decoder == "guidance_vae (X)"
    assert all(t.guidance_decoder == "guidance_vae (X)" for t in trace.split(2))
    assert Guide(Schedule.from_preset("contour")).trace.guidance_decoder is None


def test_the_world_tiny_decoder_stage_trains_saves_and_guides(tmp_path, monkeypatch):
    """The `tiny_decoder` stage of `higfa train-world` with a few steps, on a copy of the shipped world: it
    saves a small fp16 AutoencoderTiny that load_world picks up and `generate(guidance_decoder="tiny")` uses."""
    import shutil

    from higfa.schedule import Schedule
    from higfa.world import tiny_decoder
    from higfa.world.architecture import GUIDANCE_DEFAULT, TINY_DECODER_FOLDER
    from higfa.world.birds import ASSETS, TinyBirds
    from higfa.world.models import load_world
    from higfa.world.train import STAGES, TrainConfig

    assert "tiny_decoder" in STAGES
    shutil.copytree(ASSETS, tmp_path / "world", ignore=shutil.ignore_patterns(TINY_DECODER_FOLDER))
    assert load_world(tmp_path / "world").tiny_decoder is None
    monkeypatch.setitem(tiny_decoder.SETTINGS, "per_class", 2)
    monkeypatch.setitem(tiny_decoder.SETTINGS, "steps", 20)
    monkeypatch.setitem(tiny_decoder.SETTINGS, "batch", 8)
    monkeypatch.setitem(tiny_decoder.SETTINGS, "encoder_steps", 5)
    monkeypatch.setitem(tiny_decoder.SETTINGS, "check_per_class", 1)
    info = tiny_decoder.train_tiny_decoder(TrainConfig(), TinyBirds(seed=0), tmp_path / "world")
    assert info["pool_latents"] == 32 and info["decoder_parameters"] < info["teacher_decoder_parameters"]
    assert -1.0 <= info["train_pool_vjp_cosine_last256"] <= 1.0  # the classifier-path VJP was distilled too
    check = info["test_check"]  # held-out test images: the teacher's decodes are the oracle's reference
    assert check["images"] == 16 and check["l1_pm1_markings"] > 0 and check["oracle_species_teacher"] >= 0.9
    assert 0.0 <= check["oracle_species_student"] <= 1.0
    files = list((tmp_path / "world" / TINY_DECODER_FOLDER).glob("*.safetensors"))
    assert files and sum(f.stat().st_size for f in files) < 1_000_000  # small, fp16
    models = load_world(tmp_path / "world")
    tiny = models.tiny_decoder
    assert type(tiny).__name__ == "AutoencoderTiny" and tiny.config.latent_channels == models.latent_shape[0]
    z = torch.randn(2, *models.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert models.guidance_decode("tiny")[0](z).shape == models.guidance_decode("vae")[0](z).shape == (2, 3, 64, 64)
    contours = models.contours(models.world.split("fewshot", 1).images[:1], [0])
    gen = models.generate(Schedule.from_preset("higfa"), [3], contours, [0], steps=4, guidance_decoder="tiny")
    assert gen.result.trace.guidance_decoder == "guidance_vae (AutoencoderTiny)"
    assert models.guidance_decode()[1] == ("guidance_vae (AutoencoderTiny)" if GUIDANCE_DEFAULT == "tiny"
                                           else "vae (AutoencoderKL)")
