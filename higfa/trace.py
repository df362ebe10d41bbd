"""The per-step trace every sampler returns: as JSON and as a plot image.

One row per model evaluation (multi-evaluation samplers such as Heun add rows with the same
`index`). Per-sample values (confidence, w_cls, gradient norm, gate) are lists of length B.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TraceStep:
    index: int  # sampling step (position of σ in the run's sigma list)
    progress: float  # π, noise-level percent
    sigma: float
    stage: int
    cfg: float  # w_txt
    contour: float  # λ
    classifier_scale: list[float]  # w_cls per sample (0 where gated or off)
    confidence: list[float] | None  # p_k per sample, measured on this step's x̂0 (None: not measured)
    grad_norm: list[float] | None  # ‖g‖ (L2, before normalisation) per sample
    gated: list[bool]  # backward skipped because p_{k-1} ≥ τ_skip
    nan_skipped: list[bool]  # gradient was not finite: guidance skipped for that sample
    seconds: float = 0.0


# TraceStep columns that hold one value per sample of the batch.
PER_SAMPLE = ("classifier_scale", "confidence", "grad_norm", "gated", "nan_skipped")


@dataclass
class Trace:
    steps: list[TraceStep] = field(default_factory=list)
    schedule: dict[str, Any] = field(default_factory=dict)
    target: list[int] | None = None
    class_names: list[str] | None = None
    # What decoded x̂0 for the classifier, e.g. "vae (AutoencoderKL)" or "guidance_vae (TAESD)"; None: no classifier.
    guidance_decoder: str | None = None

    def add(self, step: TraceStep) -> None:
        self.steps.append(step)

    def split(self, batch: int) -> list["Trace"]:
        """One Trace per sample of a run of `batch` samples: the per-sample columns (classifier_scale,
        confidence, grad_norm, gated, nan_skipped, target) cut to that sample; shared columns kept."""
        if batch == 1:
            return [self]
        out = []
        for b in range(batch):
            steps = []
            for s in self.steps:
                d = dict(s.__dict__)
                for k in PER_SAMPLE:
                    if d[k] is not None:
                        d[k] = [d[k][b]]
                steps.append(TraceStep(**d))
            out.append(Trace(steps, self.schedule, None if self.target is None else [self.target[b]],
                             self.class_names, self.guidance_decoder))
        return out

    # ------------------------------------------------------------------ summaries
    @property
    def stage_boundary(self) -> float | None:
        return self.schedule.get("stage_boundary")

    def final_confidence(self) -> list[float] | None:
        for s in reversed(self.steps):
            if s.confidence is not None:
                return s.confidence
        return None

    def summary(self) -> dict[str, Any]:
        stage2 = [s for s in self.steps if s.stage == 2]
        gated = sum(sum(s.gated) for s in self.steps)
        guided = sum(sum(1 for w in s.classifier_scale if w > 0) for s in self.steps)
        return {"steps": len({s.index for s in self.steps}), "evaluations": len(self.steps),
                "stage2_evaluations": len(stage2), "gated_sample_steps": gated, "guided_sample_steps": guided,
                "nan_skipped": sum(sum(s.nan_skipped) for s in self.steps),
                "final_confidence": self.final_confidence(), "seconds": sum(s.seconds for s in self.steps)}

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "target": self.target, "class_names": self.class_names,
                "guidance_decoder": self.guidance_decoder, "summary": self.summary(),
                "steps": [dataclasses.asdict(s) for s in self.steps]}

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trace":
        return cls(steps=[TraceStep(**s) for s in data.get("steps", [])], schedule=data.get("schedule", {}),
                   target=data.get("target"), class_names=data.get("class_names"),
                   guidance_decoder=data.get("guidance_decoder"))

    @classmethod
    def from_json(cls, text: str) -> "Trace":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(indent=1))

    # ------------------------------------------------------------------ plot
    def plot(self, path: str | Path | None = None, size: tuple[int, int] = (768, 432), title: str | None = None
             ) -> np.ndarray:
        """Confidence and the three strengths against π, stage boundary dashed, gated steps marked.

        Returns the image as HxWx3 uint8 (and writes a PNG when `path` is given).
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        dpi = 96
        fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
        ax = fig.add_subplot(1, 1, 1)
        ax2 = ax.twinx()
        rows = self.steps
        pi = np.array([s.progress for s in rows])
        if rows:
            conf = [s.confidence for s in rows]
            measured = [i for i, c in enumerate(conf) if c is not None]
            if measured:
                c = np.array([conf[i] for i in measured])  # [n, B]
                x = pi[measured]
                for b in range(c.shape[1]):
                    ax.plot(x, c[:, b], color="tab:green", alpha=0.25 if c.shape[1] > 1 else 1.0, lw=1)
                ax.plot(x, c.mean(1), color="tab:green", lw=2, label="confidence p")
                gated = [i for i in measured if any(rows[i].gated)]
                if gated:
                    ax.scatter(pi[gated], [np.mean(conf[i]) for i in gated], marker="x", color="black",
                               zorder=5, label="gated (no backward)")
            ax.plot(pi, [s.contour for s in rows], color="tab:orange", lw=2, drawstyle="steps-post", label="contour λ")
            ax2.plot(pi, [s.cfg for s in rows], color="tab:blue", lw=2, drawstyle="steps-post", label="text cfg w_txt")
            ax2.plot(pi, [float(np.mean(s.classifier_scale)) for s in rows], color="tab:red", lw=2,
                     drawstyle="steps-post", label="classifier w_cls")
        if self.stage_boundary is not None:
            ax.axvline(self.stage_boundary, color="gray", ls="--", lw=1)
            ax.text(self.stage_boundary, 1.02, " stage 2", color="gray", fontsize=8, va="bottom")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("progress π (noise-level percent)")
        ax.set_ylabel("confidence, contour strength")
        ax2.set_ylabel("cfg, classifier scale")
        ax2.set_ylim(bottom=0)
        handles = ax.get_legend_handles_labels()
        handles2 = ax2.get_legend_handles_labels()
        ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="upper left", fontsize=7)
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        import cv2

        img = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
        if path is not None:
            Path(path).write_bytes(buf.getvalue())
        return img
