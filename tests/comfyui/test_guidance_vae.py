"""The optional guidance VAE on HiGFA Sampler / HiGFA Guider (in-process ComfyUI): a TAESD in its real file
format, loaded by the stock VAE Loader, decodes x̂0 for the classifier only; unconnected, nothing changes."""

from __future__ import annotations

import json

import pytest
import torch

from comfy_helpers import IMAGE, make_classifier

pytestmark = pytest.mark.comfyui
STEPS = 6


@pytest.fixture(scope="module")
def w(comfy):
    import folder_paths
    import nodes
    from comfy.taesd.taesd import Decoder, Encoder
    from safetensors.torch import save_file

    pack, tiny = comfy.pack, comfy.tiny
    # TAESD's own files: the state dicts of its Sequential encoder/decoder (keys "1.weight", ...), random init.
    approx = comfy.tmp / "vae_approx"
    approx.mkdir(exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        for name, net in (("taesd_encoder", Encoder()), ("taesd_decoder", Decoder())):
            for m in net.modules():  # ComfyUI's ops skip weight init: give every layer real random weights
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5)
                    if m.bias is not None:
                        torch.nn.init.uniform_(m.bias, -0.05, 0.05)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(approx / f"{name}.safetensors"))
    folder_paths.add_model_folder_path("vae_approx", str(approx))
    make_classifier(comfy.tmp / "classifiers" / "tiny.safetensors")
    folder_paths.add_model_folder_path("classifiers", str(comfy.tmp / "classifiers"))
    with torch.inference_mode():
        assert "taesd" in nodes.VAELoader.vae_list(nodes.VAELoader)
        taesd = nodes.VAELoader().load_vae("taesd")[0]
        model, clip, vae = tiny.tiny_model(0), tiny.tiny_clip(1), tiny.tiny_vae(2)
        pos = nodes.CLIPTextEncode().encode(clip, "a photo of a bird")[0]
        neg = nodes.CLIPTextEncode().encode(clip, "")[0]
        clf = pack.nodes.classifier.HiGFAClassifierLoader.execute("tiny.safetensors").args[0]
    return dict(pack=pack, model=model, vae=vae, taesd=taesd, pos=pos, neg=neg, clf=clf)


def classifier_only(w):
    """Classifier guidance from half-way, no contour (so no ControlNet is needed)."""
    return w["pack"].nodes.schedule.build_schedule("custom", contour_strength=0.0, contour_lowconf=0.0,
                                                   contour_highconf=0.0, stage_boundary=0.4, classifier_scale=2.0)


def sample(w, **extra):
    with torch.inference_mode():
        schedule = classifier_only(w)
        out = w["pack"].nodes.sampler.HiGFASampler.execute(
            w["model"], w["pos"], w["neg"], schedule, {"samples": torch.zeros(1, 4, IMAGE // 8, IMAGE // 8)}, 3,
            STEPS, "euler", "karras", 1.0, None, None, w["vae"], w["clf"], "class_1", **extra)
    latent, _, text = out.args
    return latent["samples"], json.loads(text)


def test_taesd_from_the_stock_vae_loader_guides_and_the_trace_names_it(w):
    assert type(w["taesd"].first_stage_model).__name__ == "TAESD"
    base, base_trace = sample(w)
    ours, trace = sample(w, guidance_vae=w["taesd"])
    assert base_trace["guidance_decoder"] == "vae (AutoencoderKL)"
    assert trace["guidance_decoder"] == "guidance_vae (TAESD)"
    assert trace["summary"]["guided_sample_steps"] > 0
    # another decoder on the classifier path: other confidences, another latent
    conf = [s["confidence"] for s in trace["steps"]]
    assert conf != [s["confidence"] for s in base_trace["steps"]]
    assert torch.isfinite(ours).all() and not torch.equal(ours, base)


def test_unconnected_is_bit_identical_to_the_vae_guiding(w):
    """Unconnected, the VAE decodes for the classifier as before: the same latent as passing that VAE again."""
    a, ta = sample(w)
    b, tb = sample(w, guidance_vae=w["vae"])
    assert torch.equal(a, b)
    rows = [[{k: v for k, v in s.items() if k != "seconds"} for s in t["steps"]] for t in (ta, tb)]
    assert rows[0] == rows[1] and ta["guidance_decoder"] == "vae (AutoencoderKL)"
    assert tb["guidance_decoder"] == "guidance_vae (AutoencoderKL)"


def test_guidance_vae_alone_is_enough_for_the_classifier_path(w):
    build = w["pack"].nodes.guider.build_guider
    with pytest.raises(ValueError, match="vae is not connected"):
        build(w["model"], w["pos"], w["neg"], classifier_only(w), None, None, None, w["clf"], "1")
    with torch.inference_mode():
        g = build(w["model"], w["pos"], w["neg"], classifier_only(w), None, None, None, w["clf"], "1", w["taesd"])
    assert g.guide.decoder_name == "guidance_vae (TAESD)"
