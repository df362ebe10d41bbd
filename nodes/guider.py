"""HiGFA Guider: a GUIDER for SamplerCustomAdvanced (any ComfyUI sampler and scheduler)."""

from __future__ import annotations

from ..higfa.judge import map_targets
from ._comfy import CATEGORY, CLASSIFIER, SCHEDULE, io
from .cfg_guider import HiGFACFGGuider


def build_guider(model, positive, negative, schedule, control_net=None, contour=None, vae=None, classifier=None,
                 target="0", guidance_vae=None, judge=None) -> HiGFACFGGuider:
    """Checks that what the schedule needs is connected (naming the missing inputs), resolves the target (and the
    judge's index of the same class, by name)."""
    uses_contour = schedule.uses_contour
    missing = [n for n, v in (("control_net", control_net), ("contour", contour)) if v is None]
    if uses_contour and missing:
        raise ValueError(f"schedule '{schedule.preset}' uses the contour (strength {schedule.contour_strength}) but "
                         f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not connected: connect a "
                         "ControlNet (e.g. a Canny one) and a contour image (HiGFA Contour Transform), or use the "
                         "'cfg' preset")
    uses_classifier = schedule.uses_classifier
    decoder = guidance_vae if guidance_vae is not None else vae
    missing = [n for n, v in (("classifier", classifier), ("vae", decoder)) if v is None]
    if uses_classifier and missing:
        raise ValueError(f"schedule '{schedule.preset}' uses classifier guidance but {' and '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not connected: connect HiGFA Classifier Loader "
                         "and the checkpoint's VAE or a guidance_vae (it decodes x̂0 for the classifier), or use the "
                         "'contour' preset")
    if schedule.grad_through_denoiser and uses_classifier:
        raise ValueError("schedule input 'grad_through_denoiser' = True is not supported in ComfyUI (its model "
                         "weights cannot be differentiated during sampling): set it to false (the higfa CLI "
                         "supports it)")
    index = classifier.resolve(str(target).strip()) if uses_classifier else None
    judged = judge is not None and uses_classifier  # a judge only matters where the classifier guides
    judge_index = map_targets([index], classifier.class_names, judge.class_names)[0] if judged else None
    return HiGFACFGGuider(model, schedule, positive, negative, control_net if uses_contour else None, contour, vae,
                           classifier if uses_classifier else None, index, guidance_vae if uses_classifier else None,
                           judge if judged else None, judge_index)


def guider_inputs() -> list:
    """The inputs the guider and the all-in-one sampler share (after their own)."""
    return [
        io.ControlNet.Input("control_net", optional=True,
                            tooltip="The contour ControlNet (Canny for canny contours). Its strength follows the "
                                    "schedule per step; 0 skips it."),
        io.Image.Input("contour", optional=True, tooltip="Contour image(s) for the ControlNet: one, or one per "
                                                         "latent in the batch (HiGFA Contour Transform)."),
        io.Vae.Input("vae", optional=True, tooltip="Decodes x̂0 for the classifier (needed by presets with a "
                                                   "classifier)."),
        CLASSIFIER.Input("classifier", optional=True, tooltip="Fine-grained classifier (HiGFA Classifier Loader)."),
        io.String.Input("target", default="0", tooltip="Target class: an index (0-based) or a class name of "
                                                       "the classifier. Ignored without a classifier."),
        io.Vae.Input("guidance_vae", optional=True,
                     tooltip="Optional cheaper decoder for the classifier path only, e.g. VAE Loader 'taesd' "
                             "(TAESD in models/vae_approx): at SD 1.5 size it cuts HiGFA's extra time several-fold "
                             "(docs/speed.md). The final image still uses the VAE. Unconnected: the VAE guides."),
        CLASSIFIER.Input("judge", optional=True,
                         tooltip="Optional second classifier (HiGFA Classifier Loader) that did not guide, e.g. your "
                                 "first guide when the classifier input is a second-round one: its confidence in the "
                                 "target drives the confidence ramp, the gate and measure_every instead of the "
                                 "guide's own, which the guide's gradient can fool; the gradient stays the guide's. "
                                 "Costs one extra no-grad forward per measured step. The trace shows both "
                                 "confidences. Unconnected: the guide judges itself."),
    ]


class HiGFAGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_Guider",
            display_name="HiGFA Guider",
            category=f"{CATEGORY}/sampling",
            description="GUIDER for SamplerCustomAdvanced (any sampler and scheduler): text CFG + contour at fixed "
                        "strengths, then confidence-modulated strengths and gated classifier guidance (the confidence "
                        "is the judge's when one is connected). Read its trace with HiGFA Trace.",
            inputs=[io.Model.Input("model", tooltip="The diffusion model, any family in README's 'Model families' "
                                                    "(SD 1.x/2.x, SDXL, SD3, Flux; SD 1.5 in most shipped "
                                                    "workflows). HiGFA reads its family from the model."),
                    io.Conditioning.Input("positive", tooltip="Text prompt, e.g. 'a photo of a <class>'."),
                    io.Conditioning.Input("negative", tooltip="Negative prompt: CFG's unconditional branch."),
                    SCHEDULE.Input("schedule", tooltip="From HiGFA Schedule; its cfg replaces a cfg widget."),
                    *guider_inputs()],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, schedule, control_net=None, contour=None, vae=None,
                classifier=None, target="0", guidance_vae=None, judge=None) -> io.NodeOutput:
        return io.NodeOutput(build_guider(model, positive, negative, schedule, control_net, contour, vae,
                                          classifier, target, guidance_vae, judge))
