"""The HiGFA CFGGuider: text CFG, contour strength and classifier step follow the schedule.

Per model evaluation: `Guide.plan` (core) gives the strengths, the stock CFG runs with them (other
packs' CFG hooks keep working), then `Guide.refine` (core) applies the classifier step. Guider
objects are cached node outputs, so every run starts from a reset Guide.
"""

from __future__ import annotations

import copy
import math

import comfy.model_management as mm
import comfy.model_sampling
import comfy.samplers
import torch

from ..higfa.guide import Guide
from ..higfa.sigmas import NoiseSchedule, percent_of_sigma


class HiGFACFGGuider(comfy.samplers.CFGGuider):
    def __init__(self, model_patcher, schedule, positive, negative, control_net=None, contour=None, vae=None,
                 classifier=None, target=None, guidance_vae=None, judge=None, judge_target=None):
        super().__init__(model_patcher)
        self.schedule, self.vae, self.classifier = schedule, vae, classifier
        # The classifier path decodes with the guidance VAE when one is connected (e.g. TAESD), else the VAE.
        self.decoder_vae = guidance_vae if guidance_vae is not None else vae
        use_clf = classifier is not None and self.decoder_vae is not None
        name = None
        if use_clf:
            name = (f"{'guidance_vae' if guidance_vae is not None else 'vae'} "
                    f"({type(self.decoder_vae.first_stage_model).__name__})")
        # A judge (a classifier that did not guide) measures the confidence that drives the schedule.
        self.judge = judge if use_clf else None
        self.guide = Guide(schedule, self._classify if use_clf else None, self._decode if use_clf else None,
                           target, classifier.class_names if classifier is not None else None, decoder_name=name,
                           judge=self._judge if self.judge is not None else None, judge_target=judge_target,
                           judge_name=_judge_name(self.judge) if self.judge is not None else None,
                           interrupt=mm.throw_exception_if_processing_interrupted)
        self.controls: list = []  # ControlNet copies this guider made, so it may change their strength
        if control_net is not None:
            cache: dict = {}
            hint = contour.movedim(-1, 1)
            positive, negative = (self._attach(c, control_net, hint, vae, cache) for c in (positive, negative))
            self.controls = list(cache.values())
        self.set_conds(positive, negative)
        self.set_cfg(schedule.cfg)
        self._grad = None

    def _attach(self, conds, control_net, hint, vae, cache):
        """As ControlNetApplyAdvanced does, but on copies this guider owns (upstream objects are cached
        node outputs: changing them would leak into other prompts)."""
        out = []
        for t, d in conds:
            prev = d.get("control")
            if prev not in cache:
                cache[prev] = control_net.copy().set_cond_hint(hint, self.schedule.contour_strength, (0.0, 1.0),
                                                               vae=vae).set_previous_controlnet(prev)
            out.append([t, {**d, "control": cache[prev], "control_apply_to_uncond": False}])
        return out

    def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        hints = {c.cond_hint_original.shape[0] for c in self.controls}
        if hints - {1, noise.shape[0]}:
            raise ValueError(f"contour has {max(hints)} images but the latent batch has {noise.shape[0]}: give one "
                             "contour, or one per latent (HiGFA Contour Transform's images × variants = the "
                             "latent batch_size)")
        self.guide.reset()  # guider objects are cached node outputs: one run's state must not leak
        model_sampling = self.model_patcher.get_model_object("model_sampling")  # read per run: nodes may patch it
        self._progress = _progress_fn(model_sampling)
        self.guide.sampling = _sampling(model_sampling, self.guide.classifier is not None)
        self._grid = None
        try:
            return super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            if self._grad is not None:
                self._grad = None
                mm.soft_empty_cache()

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (CFGGuider's own signature)
        mm.throw_exception_if_processing_interrupted()
        sigma = float(timestep.reshape(-1)[0])
        plan = self.guide.plan(sigma, self._progress(sigma), self._step_index(model_options, sigma))
        self.cfg = plan.cfg
        for c in self.controls:
            c.strength = plan.contour
        conds = self.conds
        if plan.contour == 0 and self.controls:  # skip the ControlNet forward instead of scaling it by 0
            self.conds = {k: [self._without_own_control(c) for c in v] for k, v in conds.items()}
        try:
            x0 = super().predict_noise(x, timestep, model_options, seed)
        finally:
            self.conds = conds
        if plan.strengths.classifier:
            mm.throw_exception_if_processing_interrupted()
        return self.guide.refine(x0, plan)

    def _without_own_control(self, cond: dict) -> dict:
        control = cond.get("control")
        if control is None or not any(control is c for c in self.controls):
            return cond
        cond = {k: v for k, v in cond.items() if k != "control"}
        if control.previous_controlnet is not None:
            cond["control"] = control.previous_controlnet
        return cond

    def _step_index(self, model_options: dict, sigma: float) -> int | None:
        """Position of σ in the run's sigmas; evaluations between grid points belong to the step before."""
        grid = model_options.get("transformer_options", {}).get("sample_sigmas")
        if grid is None:
            return None
        if self._grid is None or self._grid[0] is not grid:
            self._grid = (grid, [float(s) for s in grid])
        values = self._grid[1]
        for i, s in enumerate(values):
            if math.isclose(s, sigma, rel_tol=1e-5):
                return i
        return max(sum(s > sigma for s in values) - 1, 0)

    # ------------------------------------------------------------- the classifier's gradient path
    def _copies(self, like: torch.Tensor):
        """Decoder and classifier copies made outside inference mode (weights ComfyUI moved during
        sampling are inference tensors, which autograd refuses), once per run on the sampling device."""
        if self._grad is None:
            vae = self.decoder_vae
            device, dtype = like.device, vae.vae_dtype
            if device.type != "cpu":
                need = vae.memory_used_decode(like.shape, dtype) * 3 + mm.module_size(vae.first_stage_model)
                judge = mm.module_size(self.judge) if self.judge is not None else 0
                mm.free_memory(need + mm.module_size(self.classifier) + judge, device)
            ae = vae.first_stage_model
            # The encoder is never on this path: map it to None rather than copy it.
            skip = {id(m): None for m in (getattr(ae, n, None) for n in ("encoder", "quant_conv", "taesd_encoder"))
                    if m is not None}
            with torch.inference_mode(False):
                decoder = copy.deepcopy(ae, skip).to(device, dtype).requires_grad_(False).eval()
                classifier = copy.deepcopy(self.classifier).to(device).requires_grad_(False).eval()
                judge = (None if self.judge is None
                         else copy.deepcopy(self.judge).to(device).requires_grad_(False).eval())
            self._grad = (decoder, classifier, judge)
        return self._grad

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        decoder = self._copies(z)[0]
        latent = self.inner_model.process_latent_out(z).to(self.decoder_vae.vae_dtype)
        return (decoder.decode(latent).float() + 1.0) / 2.0  # raw decode, no clamp: keeps the gradient

    def _classify(self, image: torch.Tensor) -> torch.Tensor:
        return self._copies(image)[1](image)

    def _judge(self, image: torch.Tensor) -> torch.Tensor:
        return self._copies(image)[2](image)


def _judge_name(judge) -> str:
    """How the trace names a judge: its file when the loader recorded one, else its architecture and classes."""
    source = getattr(judge, "source", None)
    if source:
        return str(source)
    arch = getattr(judge, "architecture", "") or type(judge).__name__
    names = getattr(judge, "class_names", None)
    return f"{arch} ({len(names)} classes)" if names else arch


def _sampling(model_sampling, needed: bool) -> str:
    """How the model noises x, in higfa.families' names: CONST (SD3, Flux and other flow models) is "const";
    V_PREDICTION and EDM "v_prediction"; EPS, X0, IMG_TO_IMG and COSMOS_RFLOW (all x = x0 + σ·ε) "eps"."""
    ms = comfy.model_sampling
    if isinstance(model_sampling, ms.CONST):
        return "const"
    if isinstance(model_sampling, ms.V_PREDICTION):
        return "v_prediction"
    if isinstance(model_sampling, tuple(getattr(ms, n) for n in ("EPS", "COSMOS_RFLOW") if hasattr(ms, n))):
        return "eps"
    if needed:
        kinds = " + ".join(c.__name__ for c in type(model_sampling).__mro__ if c not in (torch.nn.Module, object))
        raise ValueError(f"model: its sampling ({kinds}) is none HiGFA's classifier step knows (EPS, "
                         "V_PREDICTION, EDM, X0, IMG_TO_IMG, COSMOS_RFLOW, CONST): use the 'cfg' or 'contour' preset"
                         " with this model, or report the model type")
    return "eps"  # no classifier step: the family does not matter


def _progress_fn(model_sampling):
    """σ -> π. Discrete models: exact inverse from their sigma table; others: bisect percent_to_sigma."""
    base, cls = comfy.model_sampling.ModelSamplingDiscrete, type(model_sampling)
    if cls.sigma is base.sigma and cls.percent_to_sigma is base.percent_to_sigma:
        sigmas = model_sampling.sigmas.detach().double().cpu()
        return NoiseSchedule(1.0 / (1.0 + sigmas**2)).sigma_to_percent
    return lambda sigma: percent_of_sigma(model_sampling.percent_to_sigma, sigma)
