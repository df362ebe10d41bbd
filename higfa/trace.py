"""The per-step trace every sampler returns: as JSON and as a plot image.

One row per model evaluation (multi-evaluation samplers such as Heun add rows with the same
`index`). Per-sample values (confidence, w_cls, gradient norm, gate) are lists of length B.
With a judge (`Guide(..., judge=...)`, `Trace.judge` names it) a row also holds the judge's p
(`judge_confidence`), which drove the schedule; `confidence` stays the guide's own p. Their gap is
the guide's fooling. Traces without a judge have neither key (their JSON reads as before).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TraceStep:
    index: int  # sampling step (position of σ in the run's sigma list)
    progress: float  # π, noise-level percent
    sigma: float  # ∞ at zero terminal SNR; JSON writes it null (strict JSON has no Infinity)
    stage: int
    cfg: float  # w_txt
    contour: float  # λ
    classifier_scale: list[float]  # w_cls per sample (0 where gated or off)
    confidence: list[float] | None  # p_k per sample, measured on this step's x̂0 (None: not measured)
    grad_norm: list[float] | None  # ‖g‖ (L2, before normalisation) per sample
    gated: list[bool]  # backward skipped because p_{k-1} ≥ τ_skip
    nan_skipped: list[bool]  # gradient was not finite: guidance skipped for that sample
    seconds: float = 0.0
    # Where guidance acts (schedule `grad_map`): per sample a MAP_SIZE² map (rows of floats) of the RMS of the
    # normalised gradient over channels and cells, divided by its maximum; None where no gradient was taken.
    grad_map: list[list[list[float]]] | None = None
    # The judge's p per sample on the same decoded x̂0 (None: no judge, or not measured); it drove the schedule.
    judge_confidence: list[float] | None = None


# TraceStep columns that hold one value per sample of the batch.
PER_SAMPLE = ("classifier_scale", "confidence", "grad_norm", "gated", "nan_skipped", "grad_map", "judge_confidence")
MAP_SIZE = 16  # side of a saved gradient map (smaller latents keep their own size)
PREVIEW_SIZE = 32  # side of the decoded x̂0 thumbnail the maps are drawn on


def grad_map(energy) -> list[list[list[float]]]:
    """Per-sample energy Σ_c g² [B,h,w] (latent grid, aligned with the image) -> the saved maps: area-pooled to
    at most MAP_SIZE², square-rooted (an RMS |g| per cell, so map² is the cell's energy), divided by the max,
    3 decimals."""
    import torch
    import torch.nn.functional as F

    e = torch.as_tensor(energy).detach().float().cpu()
    size = (min(MAP_SIZE, e.shape[-2]), min(MAP_SIZE, e.shape[-1]))
    m = F.adaptive_avg_pool2d(e.unsqueeze(1), size).squeeze(1).clamp_min(0).sqrt()
    m = m / m.flatten(1).amax(1).clamp_min(1e-30).reshape(-1, 1, 1)
    return [[[round(float(v), 3) for v in r] for r in b] for b in m.numpy()]


def preview(image) -> list:
    """Decoded x̂0 [B,3,H,W] in [0,1] -> per sample a PREVIEW_SIZE² RGB thumbnail (rows of [r, g, b] uint8)."""
    import torch
    import torch.nn.functional as F

    im = torch.as_tensor(image).detach().float().cpu().clamp(0, 1)
    small = F.interpolate(im, size=(PREVIEW_SIZE, PREVIEW_SIZE), mode="area")
    return (small * 255).round().to(torch.uint8).permute(0, 2, 3, 1).tolist()


def energy_inside(grad_map, mask) -> np.ndarray:
    """Fraction of the gradient's energy inside `mask`, per sample.

    grad_map: [B,h,w] or [h,w] (a saved map, whose square is the energy, or any |g|); mask: [B,H,W] or [H,W]
    (bool or weights in [0,1]) on the image or latent grid, e.g. the world's `Render.masks` summed over markings.
    The mask is area-resized onto the map's grid (a cell half inside counts half). Returns [B] in [0, 1]."""
    import cv2

    m = np.asarray(grad_map, dtype=np.float64)
    m = m[None] if m.ndim == 2 else m
    k = np.asarray(mask, dtype=np.float64)
    k = k[None] if k.ndim == 2 else k
    if len(k) == 1 and len(m) > 1:
        k = np.repeat(k, len(m), 0)
    if len(k) != len(m):
        raise ValueError(f"energy_inside: {len(m)} maps but {len(k)} masks: give one mask, or one per map")
    h, w = m.shape[-2:]
    interp = cv2.INTER_AREA if k.shape[-1] >= w else cv2.INTER_LINEAR
    k = np.stack([cv2.resize(np.clip(x, 0, 1), (w, h), interpolation=interp) for x in k])
    e = m**2
    return (e * k).reshape(len(e), -1).sum(1) / np.maximum(e.reshape(len(e), -1).sum(1), 1e-30)


@dataclass
class Trace:
    steps: list[TraceStep] = field(default_factory=list)
    schedule: dict[str, Any] = field(default_factory=dict)
    target: list[int] | None = None
    class_names: list[str] | None = None
    preview: list | None = None  # per sample the decoded x̂0 of the latest step with a gradient map (see `preview`)
    # What decoded x̂0 for the classifier, e.g. "vae (AutoencoderKL)" or "guidance_vae (TAESD)"; None: no classifier.
    guidance_decoder: str | None = None
    # What judged (`Guide(..., judge_name=...)`); set: `judge_confidence` drove the ramp, the gate and measure_every.
    judge: str | None = None

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
            # one target for the whole batch is everyone's target
            target = None if self.target is None else [self.target[b if len(self.target) > 1 else 0]]
            out.append(Trace(steps, self.schedule, target, self.class_names,
                             None if self.preview is None else [self.preview[b]], self.guidance_decoder, self.judge))
        return out

    # ------------------------------------------------------------------ summaries
    @property
    def stage_boundary(self) -> float | None:
        return self.schedule.get("stage_boundary")

    def final_confidence(self) -> list[float] | None:
        """The guide's p per sample at the last measured step (None: never measured)."""
        for s in reversed(self.steps):
            if s.confidence is not None:
                return s.confidence
        return None

    def final_judge_confidence(self) -> list[float] | None:
        """The judge's p per sample at the last measured step (None: no judge, or never measured)."""
        for s in reversed(self.steps):
            if s.judge_confidence is not None:
                return s.judge_confidence
        return None

    def fooling_gap(self) -> list[float] | None:
        """Per sample p_guide − p_judge at the last step both measured: how far the guide believes what it
        pushed beyond what a classifier that did not guide sees (None without a judge)."""
        for s in reversed(self.steps):
            if s.judge_confidence is not None and s.confidence is not None:
                return [g - j for g, j in zip(s.confidence, s.judge_confidence)]
        return None

    def summary(self) -> dict[str, Any]:
        stage2 = [s for s in self.steps if s.stage == 2]
        gated = sum(sum(s.gated) for s in self.steps)
        guided = sum(sum(1 for w in s.classifier_scale if w > 0) for s in self.steps)
        out = {"steps": len({s.index for s in self.steps}), "evaluations": len(self.steps),
               "stage2_evaluations": len(stage2), "gated_sample_steps": gated, "guided_sample_steps": guided,
               "nan_skipped": sum(sum(s.nan_skipped) for s in self.steps),
               "final_confidence": self.final_confidence(), "seconds": sum(s.seconds for s in self.steps)}
        if self.judge is not None:  # only judged runs: a trace without a judge keeps its bytes
            out["final_judge_confidence"] = self.final_judge_confidence()
            out["fooling_gap"] = self.fooling_gap()
        return out

    def grad_maps(self, sample: int = 0) -> list[tuple[int, float, np.ndarray]]:
        """(step index, π, map [h,w]) of every row with a saved gradient map, for one sample."""
        rows = [(s.index, s.progress, np.asarray(s.grad_map[sample], dtype=np.float32))
                for s in self.steps if s.grad_map is not None]
        return [r for r in rows if r[2].max() > 0]  # an all-zero map: no guidance reached this sample

    def energy_inside(self, mask, sample: int = 0) -> list[float]:
        """Per step with a map: the fraction of the gradient's energy inside `mask` ([H,W], see `energy_inside`)."""
        return [float(energy_inside(m, mask)[0]) for _, _, m in self.grad_maps(sample)]

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The trace as JSON-ready data. Non-finite floats (σ = ∞ at zero terminal SNR; anything else that is
        inf or NaN) become None, i.e. null, since strict JSON parsers refuse `Infinity`/`NaN`; a trace without
        them is unchanged, byte for byte. `from_dict` reads a null σ back as ∞."""
        data = {"schedule": self.schedule, "target": self.target, "class_names": self.class_names,
                "guidance_decoder": self.guidance_decoder, "summary": self.summary(),
                "steps": [_row(s) for s in self.steps]}
        if self.preview is not None:
            data["preview"] = self.preview
        if self.judge is not None:
            data["judge"] = self.judge
        return _strict(data)

    def to_json(self, **kw: Any) -> str:
        """Strict JSON: non-finite floats are null (see `to_dict`), so any JSON parser reads it."""
        return json.dumps(self.to_dict(), allow_nan=False, **kw)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trace":
        steps = [TraceStep(**{**s, "sigma": math.inf if s.get("sigma", 0.0) is None else s["sigma"]})
                 for s in data.get("steps", [])]  # a null σ was ∞ (zero terminal SNR)
        return cls(steps=steps, schedule=data.get("schedule", {}),
                   target=data.get("target"), class_names=data.get("class_names"), preview=data.get("preview"),
                   guidance_decoder=data.get("guidance_decoder"), judge=data.get("judge"))

    @classmethod
    def from_json(cls, text: str) -> "Trace":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(indent=1))

    # ------------------------------------------------------------------ plot
    def plot(self, path: str | Path | None = None, size: tuple[int, int] = (768, 432), title: str | None = None
             ) -> np.ndarray:
        """Confidence and the three strengths against π, stage boundary dashed, gated steps marked; a judged run
        draws p_guide and p_judge with their gap (the fooling) shaded. Below, when the trace has gradient maps, a
        strip of them (sample 0) upsampled onto the decoded x̂0.

        Returns the image as HxWx3 uint8 (and writes a PNG when `path` is given).
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        dpi = 96
        maps = self.grad_maps()
        strip = STRIP_HEIGHT if maps else 0
        fig = Figure(figsize=(size[0] / dpi, (size[1] + strip) / dpi), dpi=dpi)
        grid = fig.add_gridspec(2 if maps else 1, 1, height_ratios=[size[1], strip] if maps else None)
        ax = fig.add_subplot(grid[0])
        if maps:
            self._plot_maps(fig, grid[1], maps)
        ax2 = ax.twinx()
        rows = self.steps
        pi = np.array([s.progress for s in rows])
        if rows:
            if any(s.judge_confidence is not None for s in rows):
                _plot_judged(ax, rows, pi)
            else:
                _plot_confidence(ax, rows, pi)
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

    def _plot_maps(self, fig, cell, maps) -> None:
        """At most MAX_MAPS maps, evenly chosen, each |g| as a heat overlay on the decoded x̂0 thumbnail."""
        import cv2

        if len(maps) > MAX_MAPS:
            maps = [maps[i] for i in np.linspace(0, len(maps) - 1, MAX_MAPS).round().astype(int)]
        base = None if self.preview is None else np.asarray(self.preview[0], dtype=np.float32) / 255.0
        sub = cell.subgridspec(1, MAX_MAPS, wspace=0.05)
        for j, (index, pi, m) in enumerate(maps):
            a = fig.add_subplot(sub[0, j])
            side = PREVIEW_SIZE * 2
            heat = cv2.resize(m, (side, side), interpolation=cv2.INTER_CUBIC).clip(0, 1)
            if base is not None:
                a.imshow(cv2.resize(base, (side, side), interpolation=cv2.INTER_LINEAR))
                a.imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
            else:
                a.imshow(heat, cmap="inferno", vmin=0, vmax=1)
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(f"|g| step {index}\nπ={pi:.2f}", fontsize=6)


def _plot_confidence(ax, rows: list[TraceStep], pi: np.ndarray) -> None:
    """The guide's p per sample (thin) and its batch mean (thick), gated steps ×."""
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


def _plot_judged(ax, rows: list[TraceStep], pi: np.ndarray) -> None:
    """A judged run: the guide's p and the judge's p (which drove the schedule), batch means thick, the
    gap between them shaded (the guide's fooling, per step), gated steps × on the judge's curve."""
    measured = [i for i, s in enumerate(rows) if s.confidence is not None and s.judge_confidence is not None]
    if not measured:
        return
    x = pi[measured]
    guide = np.array([rows[i].confidence for i in measured])  # [n, B]
    judge = np.array([rows[i].judge_confidence for i in measured])
    thin = 0.25 if guide.shape[1] > 1 else None
    for values, color, label in ((guide, JUDGE_COLORS[0], "p_guide (the guide's own)"),
                                 (judge, JUDGE_COLORS[1], "p_judge (drives the schedule)")):
        if thin:
            for b in range(values.shape[1]):
                ax.plot(x, values[:, b], color=color, alpha=thin, lw=1)
        ax.plot(x, values.mean(1), color=color, lw=2, label=label)
    ax.fill_between(x, judge.mean(1), guide.mean(1), where=guide.mean(1) >= judge.mean(1), color=JUDGE_COLORS[2],
                    alpha=0.18, lw=0, label="fooling gap", interpolate=True)
    gated = [i for i in measured if any(rows[i].gated)]
    if gated:
        ax.scatter(pi[gated], [np.mean(rows[i].judge_confidence) for i in gated], marker="x", color="black",
                   zorder=5, label="gated (no backward)")


JUDGE_COLORS = ("tab:green", "tab:purple", "tab:red")  # p_guide, p_judge, the gap between them
STRIP_HEIGHT = 110  # px added below the chart for the gradient-map strip
MAX_MAPS = 8


def _strict(value: Any) -> Any:
    """`value` with every non-finite float inside dicts/lists/tuples replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _row(step: TraceStep) -> dict[str, Any]:
    """A trace row as JSON; `grad_map` and `judge_confidence` only where saved (other traces read as before)."""
    d = dataclasses.asdict(step)
    for key in ("grad_map", "judge_confidence"):
        if d[key] is None:
            del d[key]
    return d
