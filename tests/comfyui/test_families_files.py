"""Model families from real-format files through ComfyUI's stock loader nodes (in-process): an SD3-class
single-file checkpoint (MMDiT + TAESD3-format VAE, CheckpointLoaderSimple detects it as SD3: flow, CONST,
shift 3) with a diffusers-layout SD3 ControlNet (ControlNetLoader) and taesd3 (VAE Loader); and an SD 1.5-shaped
checkpoint made v-prediction with zero terminal SNR by the stock ModelSamplingDiscrete node, as users run SD 1.x
v-prediction models. SDXL has no such stand-in: CheckpointLoaderSimple only detects SDXL at its full transformer
depth ([0, 0, 2, 2, 10, 10], a 2.6 B-parameter UNet); tests/comfyui/test_families.py covers it in-process."""

from __future__ import annotations

import pytest
import torch

from comfy_helpers import IMAGE, make_classifier
from guider_support import canny_contour, spy_refine

pytestmark = pytest.mark.comfyui
STEPS = 8


@pytest.fixture(scope="module")
def files(comfy):
    """Writes the files under models/<folder> of a temp base, registers the folders, loads what both share."""
    import folder_paths
    import tiny_families
    from safetensors.torch import save_file

    base = comfy.tmp / "families-files"
    for folder in ("checkpoints", "controlnet", "classifiers"):
        (base / folder).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(folder, str(base / folder))
    save_file(tiny_families.sd3_checkpoint_state(), str(base / "checkpoints" / "tiny_sd3.safetensors"))
    save_file(tiny_families.sd3_controlnet_state(), str(base / "controlnet" / "tiny_sd3_canny.safetensors"))
    save_file(comfy.tiny.sd15_checkpoint_state(), str(base / "checkpoints" / "tiny_sd15.safetensors"))
    save_file(comfy.tiny.sd15_controlnet_state(), str(base / "controlnet" / "tiny_sd15_canny.safetensors"))
    tiny_families.write_taesd(base / "vae_approx", "taesd3", 16)
    tiny_families.write_taesd(base / "vae_approx", "taesd", 4)
    folder_paths.add_model_folder_path("vae_approx", str(base / "vae_approx"))
    make_classifier(base / "classifiers" / "tiny_families_files.safetensors")
    pack = comfy.pack
    with torch.inference_mode():
        contour = canny_contour(pack)
        clf = pack.nodes.classifier.HiGFAClassifierLoader.execute("tiny_families_files.safetensors").args[0]
    return dict(pack=pack, contour=contour, clf=clf)


def load(name: str, files: dict) -> dict:
    import nodes
    import tiny_families
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    ckpt, cnet, taesd = {"sd3": ("tiny_sd3", "tiny_sd3_canny", "taesd3"),
                         "sd15_vpred_zsnr": ("tiny_sd15", "tiny_sd15_canny", "taesd")}[name]
    with torch.inference_mode():
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(f"{ckpt}.safetensors")
        control_net = nodes.ControlNetLoader().load_controlnet(f"{cnet}.safetensors")[0]
        guidance_vae = nodes.VAELoader().load_vae(taesd)[0]
        if name == "sd15_vpred_zsnr":
            model = ModelSamplingDiscrete().patch(model, "v_prediction", True)[0]
    assert clip is None  # no text encoder in these files: conditioning of the model's widths instead
    pos, neg = tiny_families.conditioning(7, pooled=name == "sd3", width=768 if name != "sd3" else 32)
    ms = model.get_model_object("model_sampling")
    import comfy.samplers as cs

    channels = 16 if name == "sd3" else 4
    noise = torch.randn(1, channels, IMAGE // 8, IMAGE // 8, generator=torch.Generator().manual_seed(3))
    return dict(files, model=model, vae=vae, control_net=control_net, guidance_vae=guidance_vae, pos=pos, neg=neg,
                ms=ms, noise=noise, sigmas=cs.calculate_sigmas(ms, "simple", STEPS).cpu())


def run(w, guider):
    import comfy.samplers as cs

    with torch.inference_mode():
        return guider.sample(w["noise"], torch.zeros_like(w["noise"]), cs.sampler_object("euler"), w["sigmas"],
                             disable_pbar=True, seed=0)


@pytest.mark.parametrize("name, sampling", [("sd3", "const"), ("sd15_vpred_zsnr", "v_prediction")])
def test_stock_loaded_family_samples_like_stock_and_guides_by_its_family(files, name, sampling):
    import comfy.samplers as cs
    from higfa_pack.higfa.families import guidance_sigma, reference_sigma

    w = load(name, files)
    build, schedule = w["pack"].nodes.guider.build_guider, w["pack"].nodes.schedule.build_schedule
    stock = cs.CFGGuider(w["model"])
    stock.set_conds(w["pos"], w["neg"])
    stock.set_cfg(7.5)
    ours = build(w["model"], w["pos"], w["neg"], schedule("cfg"))
    assert torch.equal(run(w, ours), run(w, stock))

    g = build(w["model"], w["pos"], w["neg"], schedule("higfa", stage_boundary=0.5), w["control_net"], w["contour"],
              w["vae"], w["clf"], "1", w["guidance_vae"])
    steps = spy_refine(g.guide)
    out = run(w, g)
    assert torch.isfinite(out).all() and g.guide.sampling == sampling
    trace = g.guide.trace
    assert trace.guidance_decoder == "guidance_vae (TAESD)" and trace.summary()["guided_sample_steps"] > 0
    for (x0, new, plan), row in zip(steps, trace.steps):
        if plan.progress > 0:
            assert w["ms"].percent_to_sigma(plan.progress) == pytest.approx(plan.sigma, rel=1e-4)
        if row.classifier_scale[0] > 0:  # rms-normalised step: its RMS is w·σ_g², σ_g the SD table's σ at π
            sg = guidance_sigma(plan.sigma, sampling, plan.progress)
            assert sg == pytest.approx(reference_sigma(plan.progress)) and abs(sg - plan.sigma) > 1e-3 * plan.sigma
            rms = float((new - x0).pow(2).mean().sqrt())
            assert rms == pytest.approx(row.classifier_scale[0] * sg**2, rel=1e-3)
