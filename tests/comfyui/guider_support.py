"""What the in-process guider tests share (test_guider, test_judge_nodes): ComfyUI's stock CFG guider over the
same tiny objects, and the core reference sampler (higfa.sampler.sample) run inside ComfyUI's sampling context,
so the HiGFA guider can be compared with both. `w` is a test module's fixture dict (model, pos, neg, cnet,
contour, vae, noise, latent, sigmas, pack)."""

from __future__ import annotations

import copy

import torch

from comfy_helpers import IMAGE, make_classifier, make_image


def stock(w, cfg=7.5, contour=None):
    """ComfyUI's CFGGuider on w's model and prompts, with w's ControlNet applied at `contour` (None: none)."""
    import comfy.samplers as cs
    import nodes

    pos, neg = w["pos"], w["neg"]
    if contour is not None:
        pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, w["cnet"], w["contour"], contour,
                                                                    0.0, 1.0)
    g = cs.CFGGuider(w["model"])
    g.set_conds(pos, neg)
    g.set_cfg(cfg)
    return g


class Branches:
    """The core Denoiser protocol over ComfyUI's own batched model call."""

    def __init__(self, cfg_guider, model_options, controls, pack):
        self.g, self.model_options, self.controls = cfg_guider, model_options, controls
        ms = cfg_guider.inner_model.model_sampling
        self.noise_schedule = pack.higfa.sigmas.NoiseSchedule(1.0 / (1.0 + ms.sigmas.double() ** 2))

    def __call__(self, x, sigma, branches, contour_strength):
        import comfy.samplers as cs

        for c in self.controls:
            c.strength = contour_strength
        strip = (lambda cs_: [{k: v for k, v in c.items() if k != "control"} for c in cs_]) if contour_strength == 0 \
            else (lambda cs_: cs_)
        conds = [strip(self.g.conds["positive"]), strip(self.g.conds["negative"]) if "uncond" in branches else None]
        out = cs.calc_cond_batch(self.g.inner_model, conds, x, sigma, self.model_options)
        return [out[1] if b == "uncond" else out[0] for b in branches]


def reference_sample(w, sched, classifier, target, class_names, **guide_kw):
    """(latent, core SampleResult) of higfa.sampler.sample with a Guide of `sched` over the stock guider's model
    (ComfyUI's sampling context, euler's sigmas of w), the classifier decoding x̂0 with a copy of w's VAE."""
    import comfy.samplers as cs

    pack = w["pack"]
    ref = stock(w, contour=sched.contour_strength)
    controls = [ref.original_conds["positive"][0]["control"]]
    with torch.inference_mode(False):
        decoder = copy.deepcopy(w["vae"].first_stage_model).requires_grad_(False)
    latent_out = w["model"].model.process_latent_out
    guide = pack.higfa.guide.Guide(sched, classifier=classifier, target=target, class_names=class_names,
                                   decode=lambda z: (decoder.decode(latent_out(z)) + 1) / 2, **guide_kw)
    seen = {}

    def reference(model, x, sigmas, extra_args=None, callback=None, disable=None):
        den = Branches(model.inner_model, extra_args["model_options"], controls, pack)
        seen["result"] = pack.higfa.sampler.sample(den, torch.zeros_like(x), sigmas, guide, latent=x)
        return seen["result"].latent

    with torch.inference_mode():
        latent = ref.sample(w["noise"], w["latent"], cs.KSAMPLER(reference), w["sigmas"], disable_pbar=True, seed=0)
    return latent, seen["result"]


def spy_refine(guide) -> list:
    """Wrap guide.refine to record every call as (x̂0 in, x̂0 out, plan); returns the (growing) list."""
    steps, refine = [], guide.refine

    def spy(x0, plan, *a, **k):
        out = refine(x0, plan, *a, **k)
        steps.append((x0.clone(), out.clone(), plan))
        return out

    guide.refine = spy
    return steps


def tiny_scene(comfy, steps: int, folder: str, classifiers: dict[str, int]) -> dict:
    """The guider tests' `w`: tiny MODEL/VAE/CONTROL_NET (built under inference mode, as loader nodes build them),
    prompts, a Canny contour, one loaded CLASSIFIER per `classifiers` entry (key -> the class it is sure of,
    saved as comfy.tmp/<folder>/<key>.safetensors), noise [2,4,h,w] and karras sigmas for `steps` steps."""
    import folder_paths
    import nodes

    import comfy.samplers as cs

    pack, tiny = comfy.pack, comfy.tiny
    for key, confident in classifiers.items():
        make_classifier(comfy.tmp / folder / f"{key}.safetensors", confident_class=confident)
    folder_paths.add_model_folder_path("classifiers", str(comfy.tmp / folder))
    with torch.inference_mode():
        model, clip, vae, cnet = tiny.tiny_model(0), tiny.tiny_clip(1), tiny.tiny_vae(2), tiny.tiny_controlnet(3)
        pos = nodes.CLIPTextEncode().encode(clip, "a photo of a bird")[0]
        neg = nodes.CLIPTextEncode().encode(clip, "")[0]
        contour = canny_contour(pack)
        load = pack.nodes.classifier.HiGFAClassifierLoader.execute
        loaded = {key: load(f"{key}.safetensors").args[0] for key in classifiers}
    noise = torch.randn(2, 4, IMAGE // 8, IMAGE // 8, generator=torch.Generator().manual_seed(0))
    sigmas = cs.calculate_sigmas(model.get_model_object("model_sampling"), "karras", steps).cpu()
    return dict(pack=pack, model=model, vae=vae, cnet=cnet, pos=pos, neg=neg, contour=contour, noise=noise,
                sigmas=sigmas, latent=torch.zeros_like(noise), **loaded)


def canny_contour(pack):
    """HiGFA Contour Transform's Canny contour of comfy_helpers.make_image(0): an IMAGE [1,H,W,3] (call it under
    inference mode, as ComfyUI runs nodes)."""
    image = torch.from_numpy(make_image(0)).float().div(255).unsqueeze(0)
    return pack.nodes.contour.HiGFAContourTransform.execute(image, "canny", 120.0, 200.0, 0.0, False, 0.5, 0,
                                                            1).args[0]
