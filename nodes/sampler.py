"""HiGFA Sampler: the all-in-one, KSampler-like node on the HiGFA guider; returns the trace too."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ._comfy import CATEGORY, SCHEDULE, io
from .guider import build_guider, guider_inputs
from .trace import trace_outputs


def sigmas_for(model, scheduler: str, steps: int, denoise: float):
    """As BasicScheduler: denoise < 1 keeps the last `steps` of a longer schedule."""
    total = steps if denoise >= 1.0 else int(steps / denoise)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, total).cpu()
    return sigmas[-(steps + 1):]


class HiGFASampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_Sampler",
            display_name="HiGFA Sampler",
            category=f"{CATEGORY}/sampling",
            description="KSampler with HiGFA guidance (cfg comes from the schedule). Returns the latent and the "
                        "per-step trace as a plot and as JSON. An optional judge (a classifier that did not guide) "
                        "sets the confidence the schedule follows.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model, any family in README's 'Model families' "
                                                "(SD 1.x/2.x, SDXL, SD3, Flux; SD 1.5 in most shipped "
                                                "workflows). HiGFA reads its family from the model."),
                io.Conditioning.Input("positive", tooltip="Text prompt, e.g. 'a photo of a <class>'."),
                io.Conditioning.Input("negative", tooltip="Negative prompt: CFG's unconditional branch."),
                SCHEDULE.Input("schedule", tooltip="From HiGFA Schedule; its cfg replaces a cfg widget."),
                io.Latent.Input("latent_image", tooltip="Empty latent (txt2img) or an encoded image with "
                                                        "denoise < 1 (img2img). Its batch size = images made."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; same seed, same image."),
                io.Int.Input("steps", default=30, min=1, max=10000, tooltip="Sampling steps (SaSPA: 30 DDIM)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="ddim",
                               tooltip="Any ComfyUI sampler; multi-evaluation ones (heun, dpm_2) share a step's "
                                       "strengths."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="ddim_uniform",
                               tooltip="Noise schedule. The stage boundary is a noise level, so where stage 2 "
                                       "starts in steps depends on it."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="1: from pure noise. Lower: keep that much of the input latent (img2img)."),
                *guider_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent"), io.Image.Output(display_name="trace_plot"),
                     io.String.Output(display_name="trace_json")],
        )

    @classmethod
    def execute(cls, model, positive, negative, schedule, latent_image, seed, steps, sampler_name, scheduler,
                denoise, control_net=None, contour=None, vae=None, classifier=None, target="0",
                guidance_vae=None, judge=None) -> io.NodeOutput:
        guider = build_guider(model, positive, negative, schedule, control_net, contour, vae, classifier, target,
                              guidance_vae, judge)
        latent = latent_image.copy()
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        sigmas = sigmas_for(model, scheduler, steps, denoise)
        noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
        callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1, {})
        out = guider.sample(noise, samples, comfy.samplers.sampler_object(sampler_name), sigmas,
                            denoise_mask=latent.get("noise_mask"), callback=callback,
                            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        latent["samples"] = out.to(mm.intermediate_device())
        image, text, payload = trace_outputs(guider.guide.trace)
        return io.NodeOutput(latent, image, text, ui=payload)
