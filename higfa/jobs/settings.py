"""The settings of one `higfa augment` run, typed and checked before anything is loaded or written.

`higfa.jobs.augment` (the command) builds them from its options; `higfa.jobs.job.run_augment` runs
them. Every check names the option and the fix, so a user error is one line, never a traceback.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..contour import ContourTransform, EdgeDetector
from ..schedule import PRESETS as SCHEDULE_PRESETS

PRESETS = tuple(SCHEDULE_PRESETS)  # the schedule presets, one home: higfa/schedule.py
FILTERS = ("drop", "mark", "aside")  # aside: written under OUT/dropped/ instead of images/, marked dropped
EDGE_METHODS = ("canny", "soft")
MAX_SIZE = 4096  # pixels: twice Flux's largest native size; beyond it a run only exhausts memory after claiming --out
MAX_TRAIN_TIMESTEPS = 100_000  # a scheduler's table is allocated at this length


@dataclass(frozen=True)
class AugmentSettings:
    """One run. Paths are as given (expanded by the job); None means "the default" where noted."""

    # data
    data: Path
    out: Path
    model: str  # diffusers folder, single-file checkpoint (+ config), or "builtin"
    variants: int = 2
    class_names: str | None = None  # file: label -> prompt name
    prompt: str | None = None  # None: the model's own (world.json), else prompts.DEFAULT_PROMPT
    super_name: str = "object"
    negative_prompt: str = ""
    limit: int | None = None
    traces: bool = False
    # models
    config: str | None = None
    controlnet: str | None = None
    controlnet_config: str | None = None
    classifier: str | None = None  # None with model "builtin": the world's guidance classifier
    guidance_vae: str | None = None  # decoder for the classifier path only; None/"none": the model's VAE
    # sampling
    preset: str = "higfa"
    schedule: str | None = None  # JSON file or inline JSON; overrides preset
    scheduler: str = "ddim"
    scheduler_options: dict[str, Any] | None = None
    steps: int = 30
    eta: float = 0.0
    size: int | None = None  # None: the model's
    seed: int = 0
    batch_size: int = 1
    # contour
    edges: str = "canny"
    canny_low: float = 120.0
    canny_high: float = 200.0
    auto_canny: bool = False
    edge_blur: float = 0.0
    contour_amount: float = 0.5
    # filter
    min_confidence: float | None = None
    filter: str = "drop"
    filter_classifier: str | None = None  # scores the final images instead of the guide (None: the judge, or the guide)
    judge: str | None = None  # a classifier that did not guide: its p drives the ramp and the gate (Guide(judge=))
    ensemble: tuple[str, ...] = ()  # more guides, pushing with the classifier as one (ClassifierEnsemble)
    # run
    overwrite: bool = False
    device: str = "auto"
    dtype: str = "float32"
    vae_dtype: str = "float32"
    shard: str | None = None
    threads: int | None = None
    deterministic: bool = False
    progress: bool = True
    quiet: bool = False

    def validate(self) -> "AugmentSettings":
        """Raise ValueError naming the first bad option (and its allowed range); return self."""
        def need(ok: bool, option: str, value: Any, rule: str) -> None:
            if not ok:
                raise ValueError(f"{option} {value}: {rule}")

        def finite(x: float) -> bool:
            return isinstance(x, (int, float)) and math.isfinite(x)

        need(self.variants >= 1, "--variants", self.variants, "need at least 1 synthetic image per real image")
        need(self.limit is None or self.limit >= 1, "--limit", self.limit, "must be >= 1 (or left out: every image)")
        need(self.steps >= 1, "--steps", self.steps, "must be >= 1 (30 is typical for DDIM)")
        need(finite(self.eta) and self.eta >= 0, "--eta", self.eta, "must be a finite number >= 0 (0 = deterministic "
             "DDIM)")
        need(self.size is None or 8 <= self.size <= MAX_SIZE, "--size", self.size, f"must be a multiple of the "
             f"model's latent grid between 8 and {MAX_SIZE} (e.g. 512 for SD 1.5, 1024 for SDXL); leave it out for "
             "the model's own size")
        need(self.batch_size >= 1, "--batch-size", self.batch_size, "must be >= 1")
        need(self.threads is None or self.threads >= 1, "--threads", self.threads, "must be >= 1")
        need(self.edges in EDGE_METHODS, "--edges", self.edges, f"choose one of {list(EDGE_METHODS)}")
        for option, v in (("--canny-low", self.canny_low), ("--canny-high", self.canny_high)):
            need(finite(v) and 0 <= v <= 255, option, v, "must be in [0, 255]")
        need(self.canny_low <= self.canny_high, "--canny-low", self.canny_low,
             f"must not exceed --canny-high {self.canny_high}")
        need(finite(self.edge_blur) and self.edge_blur >= 0, "--edge-blur", self.edge_blur,
             "must be a finite number >= 0 (Gaussian sigma in pixels)")
        need(finite(self.contour_amount) and 0 <= self.contour_amount <= 1, "--contour-amount", self.contour_amount,
             "must be in [0, 1] (0 = the contour untransformed)")
        need(self.min_confidence is None or (finite(self.min_confidence) and 0 <= self.min_confidence <= 1),
             "--min-confidence", self.min_confidence, "must be a probability in [0, 1]")
        need(self.filter in FILTERS, "--filter", self.filter, f"choose one of {list(FILTERS)}")
        need(self.preset in PRESETS, "--preset", self.preset, f"choose one of {list(PRESETS)}")
        need(self.scheduler_options is None or isinstance(self.scheduler_options, dict), "--scheduler-options",
             json.dumps(self.scheduler_options), 'must be a JSON object, e.g. \'{"set_alpha_to_one": true}\'')
        n = (self.scheduler_options or {}).get("num_train_timesteps")
        need(n is None or (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_TRAIN_TIMESTEPS),
             "--scheduler-options", json.dumps(self.scheduler_options), f"num_train_timesteps must be a whole number "
             f"in [1, {MAX_TRAIN_TIMESTEPS}] (SD: 1000), or left out: the model's own")
        return self

    def build_schedule(self):
        """The `higfa.schedule.Schedule` of --schedule (a JSON file or inline JSON), else of --preset."""
        from ..schedule import Schedule

        if self.schedule:
            p = Path(self.schedule)
            text = p.read_text() if p.is_file() else self.schedule
            if not p.is_file() and not text.lstrip().startswith("{"):
                raise FileNotFoundError(f"--schedule {self.schedule}: no such file (pass a schedule JSON file or "
                                        "inline JSON)")
            return Schedule.from_json(text)
        return Schedule.from_preset(self.preset)

    def edge_detector(self) -> EdgeDetector:
        return EdgeDetector(self.edges, self.canny_low, self.canny_high, self.edge_blur, self.auto_canny)

    def contour_transform(self) -> ContourTransform:
        return ContourTransform(amount=self.contour_amount)
