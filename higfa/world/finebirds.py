"""The harder world, `finebirds`: 8 families x 6 species told apart by combinations of subtle markings.

Built like tinybirds (birds.py: the same `TinyBirds` class, drawing code, seeded splits, marking masks and family
prompts), but fine-grained the way real data is (issue 24, docs/world.md "finebirds"):
- every family has 3 markings that vary between its species, each with two values, and its 6 species are 6 of
  the 8 combinations: no single marking names a species, two species differ in 1 to 3 markings;
- the markings include thinner ones than tinybirds': two thin wing bars instead of one broad bar, a band across
  the tail, a few breast spots (1-2 px at 64 px);
- more nuisance (drawing.Nuisance): wider scale, shift and rotation, individual colour variation, background
  clutter with berries in the markings' own colours, a leaf cluster in front of part of the bird, a colour cast
  and a light gradient.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np

from .birds import ORANGE, RED, WHITE, TinyBirds
from .drawing import Family, Nuisance, Species

YELLOW, BLACK, BROWN = (0.98, 0.85, 0.1), (0.08, 0.07, 0.07), (0.22, 0.13, 0.08)
DARK_BILL = (0.12, 0.1, 0.1)
MARKINGS = ("crown", "wing_bar", "eye_ring", "beak", "tail_band", "breast_spots")
# Difficulty, tuned on real images only (docs/world.md "finebirds", headroom check, `python -m higfa.world.headroom`):
# markings at 0.8 of tinybirds' size with stronger nuisance (scale 0.72-1.15, rotation 25°, jitter 0.12, 8 clutter
# items, occlusion 0.35, light 0.35) left a VGG-style CNN at 0.48 on 10 real images per species; tinybirds-size
# markings with this nuisance let it reach 0.80, the top of the band issue 24 asks of a strong network (0.55-0.80),
# which a stronger or pretrained one would pass. This setting lies between (test_resnet: 0.25, 0.41 here, 0.46).
MARKING_SCALE = 0.9
NUISANCE = Nuisance(scale=(0.78, 1.15), shift=(0.1, 0.08), rotate=20.0, shade=(0.8, 1.15), colour_jitter=0.08,
                    clutter=6, occlusion=0.25, light=0.25)

FAMILIES: tuple[Family, ...] = (
    Family("finch", body=(0.62, 0.36, 0.22), belly=(0.85, 0.72, 0.58), size=1.0, body_axes=(0.55, 0.40),
           head_radius=0.25, tail_length=0.32, tail_width=0.22, tail_angle=25, beak_length=0.2, beak_width=0.17),
    Family("warbler", body=(0.62, 0.66, 0.16), belly=(0.95, 0.9, 0.35), size=0.88, body_axes=(0.62, 0.27),
           head_radius=0.2, tail_length=0.45, tail_width=0.12, tail_angle=10, beak_length=0.24, beak_width=0.07),
    Family("jay", body=(0.2, 0.36, 0.78), belly=(0.78, 0.82, 0.9), size=1.12, body_axes=(0.58, 0.33),
           head_radius=0.23, tail_length=0.75, tail_width=0.2, tail_angle=30, beak_length=0.22, beak_width=0.11,
           crest=0.22),
    Family("dove", body=(0.58, 0.52, 0.58), belly=(0.82, 0.72, 0.76), size=1.02, body_axes=(0.6, 0.42),
           head_radius=0.17, tail_length=0.5, tail_width=0.26, tail_angle=18, beak_length=0.14, beak_width=0.06),
    Family("sparrow", body=(0.52, 0.45, 0.36), belly=(0.8, 0.78, 0.72), size=0.92, body_axes=(0.52, 0.36),
           head_radius=0.22, tail_length=0.38, tail_width=0.16, tail_angle=20, beak_length=0.17, beak_width=0.12),
    Family("thrush", body=(0.45, 0.4, 0.26), belly=(0.93, 0.89, 0.8), size=1.06, body_axes=(0.6, 0.38),
           head_radius=0.21, tail_length=0.42, tail_width=0.18, tail_angle=15, beak_length=0.21, beak_width=0.08),
    Family("wren", body=(0.5, 0.3, 0.2), belly=(0.78, 0.62, 0.5), size=0.8, body_axes=(0.5, 0.38),
           head_radius=0.2, tail_length=0.36, tail_width=0.12, tail_angle=-40, beak_length=0.21, beak_width=0.06),
    Family("tit", body=(0.4, 0.5, 0.44), belly=(0.92, 0.9, 0.62), size=0.84, body_axes=(0.46, 0.4),
           head_radius=0.25, tail_length=0.34, tail_width=0.14, tail_angle=12, beak_length=0.11, beak_width=0.08),
)

# A varying marking: (Species field, value 0, value 1, name word 0, name word 1). Wing bars vary in count.
_AXES = {
    "red crown": ("crown", None, RED, "", "red-crowned"),
    "yellow crown": ("crown", None, YELLOW, "", "yellow-crowned"),
    "black cap": ("crown", None, BLACK, "", "black-capped"),
    "bars": ("wing_bars", 1, 2, "one-barred", "two-barred"),
    "eye ring": ("eye_ring", None, WHITE, "", "spectacled"),
    "orange bill": ("beak", DARK_BILL, ORANGE, "", "orange-billed"),
    "yellow bill": ("beak", DARK_BILL, YELLOW, "", "yellow-billed"),
    "tail band": ("tail_band", None, WHITE, "", "band-tailed"),
    "spots": ("breast_spots", None, BROWN, "", "spotted"),
}
# Each family's three varying markings (colours chosen to stand out on that family's body).
_FAMILY_AXES = {
    "finch": ("red crown", "bars", "orange bill"),
    "warbler": ("eye ring", "bars", "tail band"),
    "jay": ("black cap", "eye ring", "spots"),
    "dove": ("yellow bill", "spots", "tail band"),
    "sparrow": ("yellow crown", "bars", "spots"),
    "thrush": ("spots", "eye ring", "yellow bill"),
    "wren": ("red crown", "tail band", "bars"),
    "tit": ("black cap", "eye ring", "orange bill"),
}
# 6 of the 8 combinations (the two left out: 011 and 100), in this order: species indices within a family.
COMBINATIONS = tuple(c for c in itertools.product((0, 1), repeat=3) if c not in ((0, 1, 1), (1, 0, 0)))


def _species(family: str) -> tuple[Species, ...]:
    axes = [_AXES[a] for a in _FAMILY_AXES[family]]
    uses_bars = any(a[0] == "wing_bars" for a in axes)
    out = []
    for combo in COMBINATIONS:
        fields = {"wing_bar": WHITE} if uses_bars else {}
        words = []
        for (field, off, on, w_off, w_on), bit in zip(axes, combo):
            fields[field] = on if bit else off
            words.append(w_on if bit else w_off)
        name = " ".join([w for w in words if w] or ["plain"]) + " " + family
        out.append(Species(name, family, **fields))
    return tuple(out)


SPECIES: tuple[Species, ...] = tuple(s for f in FAMILIES for s in _species(f.name))


def finebirds(seed: int = 0, image_size: int = 64) -> TinyBirds:
    """The finebirds world (48 species): `TinyBirds` with these families, species, markings and nuisance."""
    return TinyBirds(seed=seed, image_size=image_size, families=FAMILIES, species=SPECIES, name="finebirds",
                     markings=MARKINGS, nuisance=NUISANCE, marking_scale=MARKING_SCALE)


def species_sheet(world: TinyBirds, seeds: tuple[int, ...] = (11, 12), scale: int = 2) -> np.ndarray:
    """A contact sheet [H,W,3] uint8 RGB: one row per family, one column per species, `seeds` images of each side by
    side (the same seeds in every cell, so cells of a row differ in the markings only), each cell captioned with its
    class index and species name (without the family word)."""
    s, pad, cap = world.image_size * scale, 4, 36
    fams = world.family_names
    per = max(np.bincount(world.family_labels()))
    cell_w = s * len(seeds) + pad
    sheet = np.full((len(fams) * (s + cap + pad), per * cell_w, 3), 255, np.uint8)
    col = {f: 0 for f in fams}
    for label, sp in enumerate(world.species):
        r, c = fams.index(sp.family), col[sp.family]
        col[sp.family] += 1
        y, x = r * (s + cap + pad), c * cell_w
        for k, seed in enumerate(seeds):
            img = cv2.resize(world.render(label, seed, masks=False).image, (s, s), interpolation=cv2.INTER_NEAREST)
            sheet[y:y + s, x + k * s:x + (k + 1) * s] = img
        lines = [f"{label}:"]
        for word in sp.name[: -len(sp.family) - 1].split(" "):  # wrap to the cell's width (~6 px a character)
            if len(lines[-1]) + 1 + len(word) > (cell_w - 4) // 6:
                lines.append(word)
            else:
                lines[-1] += " " + word
        for line, text in enumerate(lines[:3]):
            cv2.putText(sheet, text, (x + 2, y + s + 10 + 11 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.34, (0, 0, 0), 1,
                        cv2.LINE_AA)
    return sheet


def nuisance_strip(world: TinyBirds, label: int, seeds: range = range(12), scale: int = 2) -> np.ndarray:
    """One species under `len(seeds)` render seeds, side by side [H,W,3] uint8 RGB: what varies besides the species."""
    s = world.image_size * scale
    return np.concatenate([cv2.resize(world.render(label, seed, masks=False).image, (s, s),
                                      interpolation=cv2.INTER_NEAREST) for seed in seeds], 1)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2 or not sys.argv[1].endswith(".png"):
        raise SystemExit("usage: python -m higfa.world.finebirds OUT.png  (the species contact sheet; also writes "
                         "OUT_nuisance.png: species 5 under 12 seeds)")
    world = finebirds()
    cv2.imwrite(sys.argv[1], cv2.cvtColor(species_sheet(world, seeds=(11,)), cv2.COLOR_RGB2BGR))
    cv2.imwrite(sys.argv[1][:-4] + "_nuisance.png", cv2.cvtColor(nuisance_strip(world, 5), cv2.COLOR_RGB2BGR))
