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
