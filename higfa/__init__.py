"""HiGFA core: hierarchically guided fine-grained augmentation with diffusion models.

Framework-free (no ComfyUI imports). One concept per module:
contour (edge maps and their seeded transforms), schedule (the two stages and the confidence
modulation), sigmas (noise levels and progress π), guidance (the math), guide (applies a schedule
inside any sampler loop), classifier (timm + sidecar), sampler (the reference loop), trace.
"""

from .classifier import Classifier, build_classifier, load_classifier, save_classifier
from .contour import ContourTransform, EdgeDetector, extract_edges
from .guide import Guide, Plan
from .sampler import Denoiser, SampleResult, sample
from .schedule import PRESETS, Schedule, Strengths
from .sigmas import NoiseSchedule
from .trace import Trace, TraceStep

__version__ = "0.1.0"

__all__ = [
    "Classifier", "ContourTransform", "Denoiser", "EdgeDetector", "Guide", "NoiseSchedule", "PRESETS", "Plan",
    "SampleResult", "Schedule", "Strengths", "Trace", "TraceStep", "build_classifier", "extract_edges",
    "load_classifier", "sample", "save_classifier",
]
