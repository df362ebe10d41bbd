"""The pictures of the nodes' help pages (web/docs/*.png), drawn by the core from the built-in world.

    python scripts/node_docs_images.py        # about 20 s on a CPU; rewrites web/docs/images/*.png

schedule.png  HiGFA Schedule's strengths over π (preset higfa) at confidence 0, 0.5 and 1
contour.png   a world image, its edges, and four seeded transforms (HiGFA Contour Transform, amount 0.5)
world.png     the world workflow's row: real | contour | cfg | higfa-robust (one species, one seed)
trace.png     the higfa-robust trace of that sample, with the strip of where the classifier's gradient acted
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "web" / "docs" / "images"
SPECIES = "spectacled warbler"
CELL = 128  # px per image in the strips (world images are 64 px: nearest-neighbour x2)


def schedule_chart(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from higfa.schedule import Schedule

    s = Schedule.from_preset("higfa")
    pi = np.linspace(0, 1, 201)
    fig = Figure(figsize=(6.4, 3.0), dpi=100)
    axes = fig.subplots(1, 3, sharex=True)
    names = {"cfg": "text cfg", "contour": "contour λ", "classifier_scale": "classifier w_cls"}
    shades = {0.0: "#c0392b", 0.5: "#e67e22", 1.0: "#27ae60"}
    for ax, (key, label) in zip(axes, names.items()):
        for conf, colour in shades.items():
            ax.plot(pi, s.curves(pi, conf)[key], color=colour, lw=1.6, label=f"confidence {conf:g}")
        ax.axvline(s.stage_boundary, color="#555", ls="--", lw=1)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("π (noise-level progress)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"preset higfa: stage 2 from π_c = {s.stage_boundary:g} (dashed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def _cell(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 or float in [0,1] -> CELL x CELL x 3 uint8 with a 2 px white frame."""
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    image = cv2.resize(image, (CELL - 4, CELL - 4), interpolation=cv2.INTER_NEAREST)
    return cv2.copyMakeBorder(image, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))


def _write(path: Path, cells: list[np.ndarray]) -> None:
    cv2.imwrite(str(path), np.concatenate(cells, axis=1)[:, :, ::-1])


def world_pictures(out: Path) -> None:
    import torch

    from higfa.contour import ContourTransform
    from higfa.schedule import Schedule
    from higfa.world.models import load_world

    torch.set_num_threads(1)
    models = load_world()
    world = models.world
    target = world.class_names.index(SPECIES)
    few = world.split("fewshot", 1)
    source = few.images[few.of_class(target)[0]]
    edges = models.edge_detector(source).astype(np.float32) / 255.0
    variants = models.contours(np.stack([source] * 4), [1, 2, 3, 4], ContourTransform(amount=0.5))
    _write(out / "contour.png", [_cell(source), _cell(edges)]
           + [_cell(v.permute(1, 2, 0).numpy()) for v in variants])

    contour = variants[:1]
    row = [_cell(source), _cell(contour[0].permute(1, 2, 0).numpy())]
    for preset in ("cfg", "higfa-robust"):
        gen = models.generate(Schedule.from_preset(preset, grad_map=True), [target], contour, [7], steps=30)
        row.append(_cell(gen.images[0]))
        if preset == "higfa-robust":
            gen.result.trace.plot(out / "trace.png", size=(640, 300),
                                  title=f"higfa-robust trace of one sample: {SPECIES}")
    _write(out / "world.png", row)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    schedule_chart(OUT / "schedule.png")
    world_pictures(OUT)
    for p in sorted(OUT.glob("*.png")):
        print(f"wrote {p.relative_to(ROOT)} ({p.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
