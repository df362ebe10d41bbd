"""Sampling the items of `higfa augment`: one `ItemSampler` per process runs HiGFA for a group of items
with loaded diffusers components, and gives back per item its uint8 image, trace and confidence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..backends.components import Components, sdxl_time_ids
from ..backends.denoiser import decode_uint8, decoder_name, sample_with_scheduler, vae_decode
from ..contour import ContourTransform, EdgeDetector
from ..guide import Guide
from ..judge import scores
from ..schedule import Schedule
from ..trace import Trace
from .dataset import square_image
from .plan import Item, Source
from .prompts import PromptText


@dataclass
class Sampled:
    """One item's result: the image [H,W,3] uint8, its one-sample trace, the classifier's final
    confidence in its target (None without a classifier)."""

    image: np.ndarray
    trace: Trace
    confidence: float | None


class ItemSampler:
    """Runs HiGFA for groups of items with loaded components (one per process)."""

    def __init__(self, components: Components, schedule: Schedule, classifier, *, size: int, steps: int, eta: float,
                 prompt: PromptText, edges: EdgeDetector, transform: ContourTransform, device: torch.device,
                 guidance_vae: torch.nn.Module | None = None, judge: tuple[Any, dict[str, int]] | None = None,
                 sampling_judge: tuple[Any, dict[str, int], str] | None = None):
        self.c, self.schedule, self.classifier = components, schedule, classifier
        # what scores the final images: (classifier, source id -> its class index), or None = the guide
        self.judge = judge
        # `--judge`: (classifier, source id -> its class index, name) whose p drives the ramp and the gate inside
        # sampling (`Guide(judge=...)`); None: the guide's own p (every output as before)
        self.sampling_judge = sampling_judge
        self.size, self.steps, self.eta, self.prompt = size, steps, eta, prompt
        self.edges, self.transform, self.device = edges, transform, device
        self.decode = vae_decode(components.vae)
        # The classifier path may decode with a cheaper decoder (--guidance-vae); final images use the VAE.
        self.guidance_decode = vae_decode(guidance_vae) if guidance_vae is not None else self.decode
        self.guidance_name = (decoder_name(guidance_vae, "guidance_vae") if guidance_vae is not None
                              else decoder_name(components.vae))
        self.uses_contour = components.controlnet is not None and schedule.uses_contour
        self.uses_classifier = classifier is not None and schedule.uses_classifier
        # prompt -> (tokens [1, L, D], pooled [1, P] or None: SDXL's pooled text vector)
        self._prompts: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.uncond = self._embed(prompt.negative)
        self._image_cache: tuple[str, np.ndarray] | None = None
        self.latent_size = size // components.vae_scale

    def _embed(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if text not in self._prompts:
            self._prompts[text] = self.c.text_conditioning([text])
        return self._prompts[text]

    def _added(self, pooled: list[torch.Tensor | None]) -> dict[str, dict[str, torch.Tensor]] | None:
        """SDXL's added conditioning per branch (pooled text + the image size's time ids), None for SD 1.x/2.x."""
        if self.uncond[1] is None:
            return None
        ids = sdxl_time_ids(self.size)
        return {"cond": {"text_embeds": torch.cat(pooled), "time_ids": ids},
                "uncond": {"text_embeds": self.uncond[1], "time_ids": ids}}

    def load(self, source: Source) -> np.ndarray:
        """The square source image (cached: consecutive items often share it). Raises SourceError."""
        if self._image_cache is None or self._image_cache[0] != source.id:
            self._image_cache = (source.id, square_image(source.path, self.size))
        return self._image_cache[1]

    def contour(self, item: Item) -> np.ndarray:
        """The transformed contour (HxWx3 float32 in [0,1]), seeded by the item alone."""
        rgb = self.load(item.source).astype(np.float32) / 255.0
        e = self.edges.edges(rgb)
        if self.transform.amount == 0:
            return e
        return self.transform.sample(self.size, self.size, (item.seed, 1)).contour(e)

    def run(self, group: Sequence[Item]) -> list[Sampled]:
        """Sample a group together (B = len(group)); one `Sampled` per item, in order."""
        gens = [torch.Generator("cpu").manual_seed(it.seed) for it in group]
        noise = torch.cat([torch.randn(1, self.c.latent_channels, self.latent_size, self.latent_size, generator=g)
                           for g in gens]).to(self.device)
        hint = None
        if self.uses_contour:
            hint = torch.from_numpy(np.stack([self.contour(it) for it in group])).permute(0, 3, 1, 2).to(self.device)
        embedded = [self._embed(self.prompt.for_source(it.source)) for it in group]
        cond = torch.cat([e[0] for e in embedded])
        targets = [it.source.target for it in group]
        use_cls = self.uses_classifier
        judged = {}
        if use_cls and self.sampling_judge is not None:
            clf, by_source, name = self.sampling_judge
            judged = dict(judge=clf, judge_target=[by_source[it.source.id] for it in group], judge_name=name)
        guide = Guide(self.schedule, self.classifier if use_cls else None, self.guidance_decode if use_cls else None,
                      targets if use_cls else None, self.classifier.class_names if use_cls else None,
                      decoder_name=self.guidance_name, **judged)
        result = sample_with_scheduler(self.c.unet, self.c.scheduler, noise, guide,
                                       {"cond": cond, "uncond": self.uncond[0]}, steps=self.steps,
                                       controlnet=self.c.controlnet if self.uses_contour else None, contour=hint,
                                       eta=self.eta, generator=gens if len(gens) > 1 else gens[0],
                                       added=self._added([e[1] for e in embedded]))
        images = decode_uint8(self.decode, result.latent)
        conf: list[float | None] = [None] * len(group)
        scorer, scored = self.classifier, targets
        if self.judge is not None:
            scorer, scored = self.judge[0], [self.judge[1][it.source.id] for it in group]
        if scorer is not None:  # the judge's scores (`higfa.judge.scores`), as the confidence filter node's
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(self.device)
            conf = [float(p) for p in scores(x, scorer, scored)]
        traces = result.trace.split(len(group))
        return [Sampled(images[b], traces[b], conf[b]) for b in range(len(group))]


def trace_counts(trace: Trace) -> tuple[int, int]:
    """(classifier-measured steps, of which the backward pass was gated) for a one-sample trace."""
    measured = [s for s in trace.steps if s.confidence is not None]
    return len(measured), sum(bool(s.gated[0]) for s in measured)
