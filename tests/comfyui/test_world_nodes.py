"""The built-in world in ComfyUI (nodes/world.py): the converted UNet, ControlNet and VAE give the
diffusers models' outputs, the ControlNet honours ComfyUI's ControlBase contract, the image / text /
latent nodes, HiGFA beats the contour preset on the guidance classifier's confidence, and the shipped
world workflow runs through a real server as it ships (no files to add)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

import workflow_checks as WC
from comfy_helpers import shipped_workflow

pytestmark = pytest.mark.comfyui
SIGMA_STEPS = (20, 300, 700, 999)  # training timesteps whose σ the parity tests use


def _load(comfy, path: str, name: str = "tinybirds", pick=None) -> dict:
    """The loader's outputs for (path, world) (built under inference mode, as ComfyUI runs nodes), the core's
    diffusers models of the same folder, and contours of two real few-shot images: `pick` (their indices in the
    2-per-species split), else the first finch's and the first warbler's."""
    from higfa.world.models import load_world

    W = comfy.pack.nodes.world
    with torch.inference_mode():
        model, vae, cnet, clf, handle, names, tiny, judge = W.HiGFAWorldLoader.execute(path, name).args
    root = W.resolve_path(path, name)
    core = load_world(root)
    few = core.world.split("fewshot", 2)
    if pick is None:
        first = [next(i for i, c in enumerate(core.world.class_names) if c.endswith(f)) for f in ("finch", "warbler")]
        pick = [int(few.of_class(b)[0]) for b in first]
    contours = core.contours(few.images[list(pick)], seeds=[0, 1])
    return dict(W=W, pack=comfy.pack, model=model, vae=vae, cnet=cnet, clf=clf, world=handle, names=names,
                tiny=tiny, judge=judge, core=core, contours=contours, path=root)


@pytest.fixture(scope="module")
def world(comfy, world_path):
    """The demo's world (tinybirds, 8-channel latent) through the loader."""
    return _load(comfy, str(world_path), pick=(2, 12))  # a red-crowned finch and a spectacled warbler


@pytest.fixture(scope="module")
def fine(comfy):
    """The harder shipped world (finebirds: 48 species, 16-channel latent, no tiny decoder) through the loader's
    `world` choice with an empty path, as a user picks it."""
    return _load(comfy, "", "finebirds")


def _control(w, strength=1.0, hint=None, percent=(0.0, 1.0)):
    ms = w["model"].model.model_sampling
    c = w["cnet"].copy().set_cond_hint(w["contours"][:1] if hint is None else hint, strength, percent)
    c.pre_run(w["model"].model, ms.percent_to_sigma)
    return c


def _inputs(w, batch=1, seed=0):
    ms = w["model"].model.model_sampling
    emb = w["core"].encode_prompts(["a photo of a finch", "a photo of a warbler"][:batch])
    channels = w["core"].unet.config.in_channels  # the world's latent: tinybirds 8, finebirds 16
    x = torch.randn(batch, channels, 16, 16, generator=torch.Generator().manual_seed(seed))
    return ms, emb, x


# ----------------------------------------------------------------------------- the loader's objects
def test_loader_gives_comfyui_types_with_the_worlds_geometry(world):
    import comfy.controlnet
    import comfy.model_patcher
    import comfy.model_sampling
    import comfy.sd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    model, vae, core = world["model"], world["vae"], world["core"]
    assert isinstance(model, comfy.model_patcher.ModelPatcher) and isinstance(model.model.diffusion_model, UNetModel)
    fmt = model.get_model_object("latent_format")
    assert fmt.latent_channels == 8 and fmt.scale_factor == pytest.approx(core.vae.config.scaling_factor)
    assert np.asarray(fmt.latent_rgb_factors).shape == (8, 3) and len(fmt.latent_rgb_factors_bias) == 3
    ms = model.get_model_object("model_sampling")
    assert isinstance(ms, comfy.model_sampling.ModelSamplingDiscrete) and isinstance(ms, comfy.model_sampling.EPS)
    assert torch.allclose(ms.sigmas.double(), core.noise_schedule.sigmas, rtol=1e-6)
    assert not model.model.concat_keys  # 8 channels are the latent, not SD inpainting's image + mask
    assert isinstance(vae, comfy.sd.VAE) and vae.latent_channels == 8 and vae.downscale_ratio == 4
    assert vae.spacial_compression_encode() == vae.spacial_compression_decode() == 4
    assert isinstance(vae.patcher, comfy.model_patcher.ModelPatcher)
    assert isinstance(world["cnet"], comfy.controlnet.ControlBase)
    assert world["clf"].class_names == core.world.class_names == world["names"].split("\n")
    # Normal tensors (made outside inference mode): the guider's gradient path copies and uses them.
    assert not any(p.is_inference() for p in vae.first_stage_model.parameters())
    assert not any(p.is_inference() for p in world["clf"].parameters())


@pytest.mark.parametrize("name", ["world", "fine"])
def test_unet_and_controlnet_give_the_diffusers_denoised_output(name, request):
    """ComfyUI's UNetModel with the converted weights + the wrapped ControlNet, via BaseModel.apply_model,
    against higfa's DiffusersDenoiser on the diffusers models, at several σ and contour strengths; both
    shipped worlds (their latents have 8 and 16 channels)."""
    from higfa.backends.denoiser import DiffusersDenoiser

    world = request.getfixturevalue(name)
    core = world["core"]
    ms, emb, x = _inputs(world)
    den = DiffusersDenoiser(core.unet, {"cond": emb, "uncond": emb}, core.noise_schedule, core.controlnet,
                            world["contours"][:1])
    worst = 0.0
    with torch.inference_mode():
        for t in SIGMA_STEPS:
            sigma = ms.sigmas[t].reshape(1)
            for strength in (0.0, 0.6, 1.0):
                control = None
                if strength:
                    control = _control(world, strength).get_control(x, sigma, {"c_crossattn": emb}, 1, {})
                ours = world["model"].model.apply_model(x, sigma, c_crossattn=emb, control=control)
                ref = den(x, sigma, ["cond"], strength)[0]
                diff = float((ours - ref).abs().max())
                worst = max(worst, diff / max(1.0, float(ref.abs().max())))
    print(f"UNet+ControlNet: max relative |ComfyUI - diffusers| = {worst:.2e}")
    assert worst < 1e-5


def test_controlnet_batched_cond_and_uncond_broadcast_the_hint(world):
    """Two latents in one call with cond and uncond batched (as calc_cond_batch does), one hint per latent."""
    from higfa.backends.denoiser import DiffusersDenoiser

    core = world["core"]
    ms, emb, x = _inputs(world, batch=2, seed=1)
    uncond = core.encode_prompts([""]).expand(2, -1, -1)
    sigma = ms.sigmas[500].reshape(1).expand(4)
    context = torch.cat([emb, uncond])
    with torch.inference_mode():
        control = _control(world, 0.8, hint=world["contours"]).get_control(
            torch.cat([x, x]), sigma, {"c_crossattn": context}, 2, {})
        ours = world["model"].model.apply_model(torch.cat([x, x]), sigma, c_crossattn=context, control=control)
    den = DiffusersDenoiser(core.unet, {"cond": emb, "uncond": uncond}, core.noise_schedule, core.controlnet,
                            world["contours"])
    cond, unc = den(x, sigma[:2], ["cond", "uncond"], 0.8)
    assert float((ours - torch.cat([cond, unc])).abs().max()) < 1e-4


def test_controlnet_strength_range_copy_chain_and_models(world):
    ms, emb, x = _inputs(world)
    sigma = ms.sigmas[400].reshape(1)
    cond = {"c_crossattn": emb}
    with torch.inference_mode():
        full = _control(world, 1.0).get_control(x, sigma, cond, 1, {})
        half = _control(world, 0.5).get_control(x, sigma, cond, 1, {})
        assert len(full["output"]) == 6 and len(full["middle"]) == 1 and full["input"] == []
        for a, b in zip(full["output"] + full["middle"], half["output"] + half["middle"]):
            assert torch.allclose(0.5 * a, b, atol=1e-6)
        # Timestep range: outside it the control gives nothing (or the previous controlnet's).
        late = _control(world, 1.0, percent=(0.8, 1.0))
        assert late.get_control(x, sigma, cond, 1, {}) is None
        chained = _control(world, 0.5).set_previous_controlnet(_control(world, 1.0))
        both = chained.get_control(x, sigma, cond, 1, {})
        for a, b in zip(full["output"], both["output"]):
            assert torch.allclose(1.5 * a, b, atol=1e-5)
    original = world["cnet"]
    copy = original.copy()
    copy.strength = 0.25
    assert type(copy) is type(original) and copy.control_model is original.control_model
    assert original.strength == 1.0 and copy.control_model_wrapped is original.control_model_wrapped
    assert chained.get_models() == [original.control_model_wrapped] * 2


@pytest.mark.parametrize("name", ["world", "fine"])
def test_vae_through_the_stock_nodes_matches_diffusers(name, request):
    import nodes

    world = request.getfixturevalue(name)
    core, vae = world["core"], world["vae"]
    image = torch.from_numpy(core.world.split("test", 1).images[:3]).float() / 255
    with torch.inference_mode():
        latent = nodes.VAEEncode().encode(vae, image)[0]["samples"]
        decoded = nodes.VAEDecode().decode(vae, {"samples": latent})[0]
    with torch.no_grad():
        ref_z = core.vae.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
        ref_img = ((core.vae.decode(ref_z).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert latent.shape == (3, core.vae.config.latent_channels, 16, 16) and decoded.shape == (3, 64, 64, 3)
    enc, dec = float((latent - ref_z).abs().max()), float((decoded - ref_img).abs().max())
    print(f"VAE: max |ComfyUI - diffusers| encode {enc:.2e}, decode {dec:.2e}")
    assert enc < 1e-5 and dec < 1e-5


def test_latent_previews_approximate_the_decoder(world):
    """Latent2RGB factors fitted at load: the preview of a real image's latent looks like the image."""
    import latent_preview

    core, vae = world["core"], world["vae"]
    fmt = world["model"].get_model_object("latent_format")
    images = torch.from_numpy(core.world.split("test", 1).images[::4]).float() / 255
    with torch.inference_mode():
        x0 = fmt.process_in(vae.encode(images))
    previewer = latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)
    errors = []
    for i in range(len(images)):
        preview = np.asarray(previewer.decode_latent_to_preview(x0[i:i + 1])).astype(np.float32) / 255
        pooled = torch.nn.functional.avg_pool2d(images[i:i + 1].permute(0, 3, 1, 2), 4)[0].permute(1, 2, 0).numpy()
        assert preview.shape == (16, 16, 3)
        errors.append(np.abs(preview - pooled).mean())
    assert np.mean(errors) < 0.1


# ----------------------------------------------------------------------------- text, image, latent nodes
def test_text_encode_is_the_worlds_text_encoder(world):
    core, W = world["core"], world["W"]
    with torch.inference_mode():
        (cond, extra), = W.HiGFAWorldTextEncode.execute(world["world"], "a photo of a jay").args[0]
        (empty, _), = W.HiGFAWorldTextEncode.execute(world["world"], "").args[0]
    assert cond.shape == (1, 16, 64) and extra == {}
    assert torch.allclose(cond, core.encode_prompts(["a photo of a jay"])) and torch.allclose(
        empty, core.encode_prompts([""]))


def test_world_image_by_name_or_index_is_the_splits_image(world):
    W, core = world["W"], world["core"]
    few = core.world.split("fewshot", 3)
    for species, index in (("spectacled warbler", 2), ("6", 2), ("Plain_Jay", 0)):
        image, name, prompt, label = W.HiGFAWorldImage.execute(species, index, "fewshot", world["world"]).args
        assert image.shape == (1, 64, 64, 3) and image.dtype == torch.float32
        assert np.array_equal((image[0] * 255).round().byte().numpy(), few.images[few.of_class(label)[index]])
        assert name == core.world.class_names[label] and prompt == core.world.prompt(label)
    assert W.HiGFAWorldImage.execute("white-winged jay", 0, "test").args[1:] == ("white-winged jay",
                                                                                 "a photo of a jay", 9)
    with pytest.raises(ValueError, match="Did you mean"):
        W.HiGFAWorldImage.execute("red crowned finchh", 0, "fewshot", world["world"])
    with pytest.raises(ValueError, match="out of range: this classifier has 16 classes"):
        W.HiGFAWorldImage.execute("16", 0, "fewshot")


def test_empty_latent_follows_the_vae(world, comfy):
    W = world["W"]
    with torch.inference_mode():
        ours = W.HiGFAWorldEmptyLatent.execute(world["vae"], 64, 96, 3).args[0]["samples"]
        sd = W.HiGFAWorldEmptyLatent.execute(comfy.tiny.tiny_vae(2), 64, 96, 2).args[0]["samples"]
    assert ours.shape == (3, 8, 24, 16) and not ours.any()
    assert sd.shape == (2, 4, 12, 8)


def test_a_missing_or_stale_world_is_a_clear_error(world, tmp_path, monkeypatch):
    import shutil

    W = world["W"]
    monkeypatch.setenv("HIGFA_ALLOWED_ROOTS", str(tmp_path))  # worlds outside models/, allowed by the server
    with pytest.raises(FileNotFoundError, match="missing"):
        W.HiGFAWorldLoader.execute(str(tmp_path))
    stale = tmp_path / "stale"
    shutil.copytree(world["path"], stale)
    info = json.loads((stale / "world.json").read_text())
    info["comfyui_unet_config"]["in_channels"] = 4
    (stale / "world.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="stale"):
        W.HiGFAWorldLoader.execute(str(stale))


def test_loader_offers_a_judge_that_did_not_guide(world, tmp_path, monkeypatch):
    """The loader's last output: the world's guidance_robust classifier (not the guide it hands out), named for the
    trace, normal tensors; None for a world folder without one (the judge input is optional)."""
    import shutil

    from higfa.classifier import load_classifier

    W, judge, clf = world["W"], world["judge"], world["clf"]
    assert judge is not None and judge is not clf and judge.class_names == clf.class_names
    assert judge.source == "guidance_robust.safetensors"
    ref = load_classifier(world["path"] / "guidance_robust.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(judge.state_dict().values(), ref.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(judge.state_dict().values(), clf.state_dict().values()))
    assert not any(p.is_inference() for p in judge.parameters())
    monkeypatch.setenv("HIGFA_ALLOWED_ROOTS", str(tmp_path))
    bare = tmp_path / "bare"
    shutil.copytree(world["path"], bare, ignore=shutil.ignore_patterns("guidance_robust.*", "checkpoints"))
    with torch.inference_mode():
        assert W.HiGFAWorldLoader.execute(str(bare)).args[-1] is None


def test_loader_reruns_when_the_world_is_retrained(world, tmp_path, monkeypatch):
    import os
    import shutil

    W, copy = world["W"], tmp_path / "copy"
    monkeypatch.setenv("HIGFA_ALLOWED_ROOTS", str(tmp_path))  # a world outside models/, allowed by the server
    shutil.copytree(world["path"], copy)
    before = W.HiGFAWorldLoader.fingerprint_inputs(path=str(copy))
    assert W.HiGFAWorldLoader.fingerprint_inputs(path=str(copy)) == before  # stable: ComfyUI's cache holds
    os.utime(copy / "unet" / "diffusion_pytorch_model.safetensors", ns=(1, 1))
    assert W.HiGFAWorldLoader.fingerprint_inputs(path=str(copy)) != before


# ----------------------------------------------------------------------------- HiGFA with the world
@pytest.mark.parametrize("name, preset, tolerance, decoder", [
    ("world", "contour", 1e-3, "vae"), ("world", "higfa", 5e-2, "vae"), ("world", "higfa", 5e-2, "tiny"),
    ("fine", "higfa-judged", None, "vae")])
def test_a_comfyui_run_agrees_with_the_core_on_the_diffusers_models(name, preset, tolerance, decoder, request):
    """End to end: the HiGFA guider on the converted models inside ComfyUI (euler) vs the core reference
    sampler on the diffusers models outside it (DDIM in σ form: the same update): same strengths, gates
    and confidences per step, and the same final latent (classifier steps amplify float rounding, ~1e-2).
    decoder "tiny": the loader's guidance_vae output (the world's tiny decoder) on the classifier path, against
    the core's `guidance_decode("tiny")`; the trace names it. finebirds (16-channel latent, 48 species): the
    judged preset with the loader's judge, against the core's Guide with the same judge. tolerance None: the
    run's own sensitivity to rounding (finebirds' guided steps amplify it about 100x a step: the core against
    itself from a start moved by 1e-6 ends 0.3 apart), so the check is "no further apart than rounding takes
    the core from itself", per step and at the end."""
    world = request.getfixturevalue(name)  # first: it puts ComfyUI on the path
    import comfy.samplers as cs

    from higfa.guide import Guide
    from higfa.sampler import sample

    judge = world["judge"] if preset == "higfa-judged" else None
    assert judge is not None or preset != "higfa-judged", f"{name}: the loader offers no judge"
    tiny = decoder == "tiny"
    assert (world["tiny"] is not world["vae"]) == (world["core"].tiny_decoder is not None)  # VAE when none
    if tiny:
        assert world["tiny"].latent_channels == 8 and world["tiny"].downscale_ratio == 4

    pack, W, core = world["pack"], world["W"], world["core"]
    schedule = pack.nodes.schedule.build_schedule(preset)
    sigmas = core.noise_schedule.sample_sigmas(12, "ddim")
    channels = core.unet.config.in_channels
    noise = torch.randn(2, channels, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        pos = W.HiGFAWorldTextEncode.execute(world["world"], "a photo of a finch").args[0]
        neg = W.HiGFAWorldTextEncode.execute(world["world"], "").args[0]
        guider = pack.nodes.guider.build_guider(world["model"], pos, neg, schedule, world["cnet"],
                                                world["contours"].movedim(1, -1), world["vae"], world["clf"], "1",
                                                world["tiny"] if tiny else None, judge)
        ours = guider.sample(noise, torch.zeros_like(noise), cs.sampler_object("euler"), sigmas, disable_pbar=True,
                             seed=0)
    den = core.denoiser(["a photo of a finch"] * 2, world["contours"])

    def core_guide():
        return Guide(schedule, classifier=core.guidance, decode=core.guidance_decode(decoder)[0], target=[1, 1],
                     class_names=core.world.class_names, judge=judge, judge_target=None if judge is None else [1, 1])

    if preset.startswith("higfa"):
        assert guider.guide.trace.guidance_decoder == (
            "guidance_vae (WorldTinyAutoencoder)" if tiny else "vae (WorldAutoencoder)")
    s0 = float(sigmas[0])  # ComfyUI scales the noise by sqrt(1 + σ²) at the model's σ_max, the core by σ
    start = noise * (math.sqrt(1 + s0**2) / s0 if math.isclose(s0, core.noise_schedule.sigma_max, rel_tol=1e-5) else 1)
    ref = sample(den, start, sigmas, core_guide())
    slack = [0.0] * len(ref.trace.steps)  # per step: how far rounding alone moves p_guide and p_judge
    if tolerance is None:
        nudge = 1e-6 * torch.randn(start.shape, generator=torch.Generator().manual_seed(9))
        again = sample(den, start + nudge, sigmas, core_guide())
        slack = [max(_apart(x.confidence, y.confidence), _apart(x.judge_confidence, y.judge_confidence))
                 for x, y in zip(ref.trace.steps, again.trace.steps)]
        tolerance = max(5e-2, 3 * float((ref.latent - again.latent).abs().max()))
        print(f"the core from a start moved by 1e-6: p apart by up to {max(slack):.1e}, final latent tolerance "
              f"{tolerance:.2e}")
    ra, rb = guider.guide.trace.steps, ref.trace.steps
    assert [(r.stage, r.gated) for r in ra] == [(r.stage, r.gated) for r in rb] and len(ra) == 12
    for x, y, loose in zip(ra, rb, slack):
        assert (x.cfg, x.contour) == pytest.approx((y.cfg, y.contour), abs=1e-4)  # confidence-modulated
        assert (x.confidence is None) == (y.confidence is None)
        if x.confidence is not None:
            assert x.confidence == pytest.approx(y.confidence, abs=1e-3 + 3 * loose)
        assert (x.judge_confidence is None) == (y.judge_confidence is None)
        if x.judge_confidence is not None:  # the judge's p drove this step's strengths
            assert x.judge_confidence == pytest.approx(y.judge_confidence, abs=1e-3 + 3 * loose)
    assert any(x.judge_confidence is not None for x in ra) == (judge is not None)
    assert (ref.trace.summary()["guided_sample_steps"] > 0) == preset.startswith("higfa")
    ours = world["model"].model.process_latent_in(ours)  # a LATENT is unscaled; the core's latent is not
    diff = float((ours - ref.latent).abs().max())
    print(f"whole {preset} run, ComfyUI vs core: max |latent difference| {diff:.2e} (latent std "
          f"{float(ref.latent.std()):.2f})")
    assert diff < tolerance


def _apart(a, b) -> float:
    """max |a − b| of two per-sample lists (0 where a step measured none)."""
    return 0.0 if a is None or b is None else max(abs(x - y) for x, y in zip(a, b))


CASES = [("red-crowned finch", 0), ("spectacled warbler", 1), ("white-winged jay", 2), ("orange-billed dove", 3)]


def test_higfa_raises_the_guidance_confidence_over_contour(world):
    """The HiGFA Sampler node on the world models, same seed and contour, presets contour vs higfa:
    the guidance classifier's confidence in the target species on the decoded results (the oracle's,
    an independent classifier, is printed too). On the trained built-in world by a wide margin."""
    import nodes

    pack, W = world["pack"], world["W"]
    results = []
    for species, seed in CASES:
        with torch.inference_mode():
            image, name, prompt, label = W.HiGFAWorldImage.execute(species, seed, "fewshot", world["world"]).args
            pos = W.HiGFAWorldTextEncode.execute(world["world"], prompt).args[0]
            neg = W.HiGFAWorldTextEncode.execute(world["world"], "").args[0]
            contour = pack.nodes.contour.HiGFAContourTransform.execute(image, "canny", 120.0, 200.0, 0.0, False, 0.5,
                                                                        seed, 1).args[0]
            latent = W.HiGFAWorldEmptyLatent.execute(world["vae"], 64, 64, 1).args[0]
            p, oracle = {}, {}
            for preset in ("contour", "higfa"):
                out = pack.nodes.sampler.HiGFASampler.execute(
                    world["model"], pos, neg, pack.nodes.schedule.build_schedule(preset), latent, seed, 30, "ddim",
                    "ddim_uniform", 1.0, world["cnet"], contour, world["vae"], world["clf"], name)
                decoded = nodes.VAEDecode().decode(world["vae"], out.args[0])[0]
                with torch.no_grad():
                    p[preset] = float(world["clf"](decoded.movedim(-1, 1)).softmax(-1)[0, label])
                    oracle[preset] = float(world["core"].oracle(decoded.movedim(-1, 1)).softmax(-1)[0, label])
                trace = json.loads(out.args[2])
            assert trace["target"] == [label] and trace["summary"]["guided_sample_steps"] > 0
        results.append((species, p["contour"], p["higfa"], oracle["contour"], oracle["higfa"]))
    print("confidence in the target, contour -> higfa (guidance | oracle): " + "; ".join(
        f"{s}: {a:.3f} -> {b:.3f} | {c:.3f} -> {d:.3f}" for s, a, b, c, d in results))
    gains = [r[2] - r[1] for r in results]
    assert all(g > 0 for g in gains), results
    assert np.mean(gains) > 0.3, results


# ----------------------------------------------------------------------------- through the server
def test_world_workflow_runs_through_the_server(server, world_path):
    """The shipped world workflow as a user queues it (only the species, image and seed changed): the
    species flows from HiGFA World Image to the prompt and to the samplers' target."""
    prompt = WC.ui_to_api(shipped_workflow("higfa-world-compare"), server.object_info)
    kinds = {v["class_type"]: k for k, v in prompt.items()}
    prompt[kinds["HiGFA_WorldImage"]]["inputs"].update(species="spectacled warbler", index=3)
    seed = server.next_seed()
    samplers = [k for k, v in prompt.items() if v["class_type"] == "HiGFA_Sampler"]
    for k in samplers:
        prompt[k]["inputs"]["seed"] = seed
    started = time.monotonic()
    entry = server.run(prompt)
    print(f"world workflow through the server: {time.monotonic() - started:.1f} s")
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"]["messages"])[-3000:]
    traces = {prompt[k]["_meta"]["title"]: entry["outputs"][k]["higfa_trace"][0] for k in samplers}
    assert traces["Sampler: higfa-robust"]["target"] == [6] and traces["Sampler: cfg"]["target"] is None
    judged = traces["Sampler: higfa-judged"]  # the loader's judge drives its ramp and gate
    assert judged["target"] == [6] and judged["judge"] == "guidance_robust.safetensors"
    assert traces["Sampler: higfa-robust"].get("judge") is None
    images = entry["outputs"][kinds["SaveImage"]]["images"]
    assert len(images) == 1 and (server.base / "output" / images[0]["subfolder"] / images[0]["filename"]).is_file()


def test_loader_world_choice_picks_a_shipped_world_folder(world):
    """The loader's last input names the shipped world an empty path loads (finebirds beside tinybirds); it is
    appended last, so saved workflows keep their widget values."""
    from higfa.world.catalog import WORLDS, assets

    W = world["W"]
    for name in WORLDS:
        assert W.resolve_path("", name) == assets(name)
    assert W.resolve_path("") == assets("tinybirds")
    with pytest.raises(ValueError, match="world 'cub'"):
        W.resolve_path("", "cub")
    inputs = W.HiGFAWorldLoader.define_schema().inputs
    assert [i.id for i in inputs] == ["path", "world"]


# ----------------------------------------------------------------------------- the harder world
def test_finebirds_loads_with_its_16_channel_latent_48_species_and_its_judge(fine, comfy):
    """The loader's `world` choice gives finebirds' own geometry everywhere a workflow looks: a 16-channel latent
    (model, VAE, previews, HiGFA World Empty Latent), 48 species in the classifier, the class names, the judge and
    HiGFA World Image; it ships no tiny decoder, so `guidance_vae` is its VAE."""
    W, core = fine["W"], fine["core"]
    assert core.world.name == "finebirds" and core.world.num_classes == 48
    fmt = fine["model"].get_model_object("latent_format")
    assert fmt.latent_channels == 16 and np.asarray(fmt.latent_rgb_factors).shape == (16, 3)
    assert fine["vae"].latent_channels == 16 and fine["vae"].downscale_ratio == 4
    assert fine["tiny"] is fine["vae"] and core.tiny_decoder is None
    assert fine["names"].split("\n") == fine["clf"].class_names == core.world.class_names
    judge = fine["judge"]
    assert judge is not None and judge is not fine["clf"] and judge.class_names == fine["clf"].class_names
    with torch.inference_mode():
        latent = W.HiGFAWorldEmptyLatent.execute(fine["vae"], 64, 64, 2).args[0]["samples"]
    assert latent.shape == (2, 16, 16, 16)
    few = core.world.split("fewshot", 1)
    species = core.world.class_names[47]
    image, name, prompt, label = W.HiGFAWorldImage.execute(species, 0, "fewshot", fine["world"]).args
    assert (name, label, prompt) == (species, 47, core.world.prompt(47))
    assert np.array_equal((image[0] * 255).round().byte().numpy(), few.images[few.of_class(47)[0]])
