"""The built-in tiny fine-grained world: procedural "tiny birds", seeded, no files needed.

Classes are species. Species of one **family** share every large feature (silhouette, size,
body colour, tail, beak shape, crest) and differ **only in small local markings**: a crown
patch, a wing bar, an eye ring, the beak colour. That is the fine-grained situation of the
paper: a text-conditioned diffusion model that knows "a photo of a finch" but not the species
markings draws the family right and the markings at random.

Every image is a pure function of (species, seed): pose, scale, flip, background and colour
jitter come from the seed only, so two species rendered with the same seed differ exactly in
their marking regions (`Render.masks`). Splits draw their seeds from disjoint streams.

Images are HxWx3 uint8 RGB (64x64 by default), drawn at 4x and area-downsampled (anti-aliased).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .drawing import Family, Layout, Nuisance, Species, draw

# The shipped models trained on this world (diffusers folder + classifiers; docs/world.md).
ASSETS = Path(__file__).resolve().parent / "assets"
IMAGE_SIZE = 64
SUPERSAMPLE = 4
PROMPT_TEMPLATE = "a photo of a {family}"
MARKINGS = ("crown", "wing_bar", "eye_ring", "beak")
# Thin parts every species has (not markings): 1-px legs are what a 4x-downsampling VAE drops first, so the world's
# decoder training weights them like the markings (train.py); `Render.parts`, `Split.parts`.
PARTS = ("legs",)
# One stream per split: seeds of different splits never collide.
SPLITS = {"train": 1, "fewshot": 2, "test": 3, "val": 4}


def model_path() -> Path:
    """The built-in world's diffusers folder (model_index.json, unet/, controlnet/, vae/, text_encoder/,
    tokenizer/, scheduler/) with guidance.safetensors and oracle.safetensors beside them."""
    return ASSETS


RED, WHITE, ORANGE = (0.9, 0.08, 0.08), (0.97, 0.97, 0.95), (1.0, 0.55, 0.0)

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
)


def _species(family: str, kind: str) -> Species:
    marks = {"plain": {}, "red-crowned": {"crown": RED}, "white-winged": {"wing_bar": WHITE},
             "spectacled": {"eye_ring": WHITE}, "orange-billed": {"beak": ORANGE}}[kind]
    return Species(f"{kind} {family}", family, **marks)


# 4 families x 4 species. Within a family any two species differ in one or two markings.
SPECIES: tuple[Species, ...] = tuple(_species(f, k) for f, kinds in (
    ("finch", ("plain", "red-crowned", "white-winged", "orange-billed")),
    ("warbler", ("red-crowned", "white-winged", "spectacled", "orange-billed")),
    ("jay", ("plain", "white-winged", "spectacled", "orange-billed")),
    ("dove", ("plain", "red-crowned", "spectacled", "orange-billed")),
) for k in kinds)


@dataclass(frozen=True)
class Render:
    image: np.ndarray  # HxWx3 uint8 RGB
    masks: dict[str, np.ndarray]  # marking name -> HxW bool, where that marking (would) sit
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # PARTS name -> HxW bool (with masks=True)


@dataclass(frozen=True)
class Split:
    """A labelled set of world images. images: [N,H,W,3] uint8; labels: [N] int64 species index;
    seeds: [N] the render seed of each image (re-render any image with `TinyBirds.render`)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    seeds: np.ndarray
    masks: np.ndarray | None = None  # [N,H,W] bool: union of the marking regions (split(..., masks=True))
    parts: np.ndarray | None = None  # [N,H,W] bool: union of the thin PARTS (legs), with masks=True

    def __len__(self) -> int:
        return len(self.labels)

    def loss_weights(self, marking: float, part: float = 0.0) -> np.ndarray:
        """Per-pixel weights [N,1,H,W] float32 for a reconstruction loss: 1, plus `marking` on the marking regions
        and `part` on the thin parts (a blurry decoder drops both). Needs split(..., masks=True)."""
        if self.masks is None or self.parts is None:
            raise ValueError(f"split {self.name!r} has no masks: build it with split(..., masks=True)")
        return (1 + marking * self.masks.astype(np.float32) + part * self.parts.astype(np.float32))[:, None]

    def of_class(self, label: int) -> np.ndarray:
        """Indices of the images of one species (in split order)."""
        return np.flatnonzero(self.labels == label)


@dataclass(frozen=True)
class TinyBirds:
    """The world. `species[i]` is class i; `families` the coarse groups the text model knows."""

    seed: int = 0
    image_size: int = IMAGE_SIZE
    families: tuple[Family, ...] = FAMILIES
    species: tuple[Species, ...] = SPECIES
    name: str = "tinybirds"
    markings: tuple[str, ...] = MARKINGS  # the markings that `Render.masks` reports (and where they sit)
    nuisance: Nuisance = Nuisance()  # what varies from image to image besides the species (drawing.py)
    marking_scale: float = 1.0  # marking size relative to tinybirds'
    _family_index: dict = field(default=None, init=False, repr=False, compare=False)
    _layout: Layout = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size = {self.image_size}: markings need at least 32 px (64 recommended)")
        names = [f.name for f in self.families]
        unknown = sorted({s.family for s in self.species} - set(names))
        if unknown:
            raise ValueError(f"species refer to unknown families {unknown}; known: {names}")
        object.__setattr__(self, "_family_index", {n: i for i, n in enumerate(names)})
        bars = max([s.wing_bars for s in self.species if s.wing_bar is not None], default=1)
        if bars not in (1, 2):
            raise ValueError(f"species draw {bars} wing bars: a world has 1 or 2 wing-bar slots")
        object.__setattr__(self, "_layout", Layout(tuple(self.markings), bars, self.marking_scale))

    # ------------------------------------------------------------------ names and text
    @property
    def class_names(self) -> list[str]:
        return [s.name for s in self.species]

    @property
    def family_names(self) -> list[str]:
        return [f.name for f in self.families]

    @property
    def num_classes(self) -> int:
        return len(self.species)

    def family_of(self, label: int) -> int:
        """Family index of a species index."""
        return self._family_index[self.species[int(label)].family]

    def family_labels(self) -> np.ndarray:
        """[num_classes] family index per species."""
        return np.array([self.family_of(i) for i in range(self.num_classes)])

    def prompt(self, label: int) -> str:
        """The family text of a species: what the diffusion model was trained on."""
        return PROMPT_TEMPLATE.format(family=self.species[int(label)].family)

    # ------------------------------------------------------------------ sampling
    def split_seeds(self, split: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels and render seeds of a split, class-major: [per_class of class 0, then class 1, ...]."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: choose one of {sorted(SPLITS)}")
        if per_class < 1:
            raise ValueError(f"per_class = {per_class}: need at least one image per species")
        labels = np.repeat(np.arange(self.num_classes), per_class)
        index = np.tile(np.arange(per_class), self.num_classes)
        seeds = np.array([_seed(self.seed, SPLITS[split], int(c), int(i)) for c, i in zip(labels, index)],
                         dtype=np.int64)
        return labels, seeds

    def split(self, split: str, per_class: int, masks: bool = False) -> Split:
        """`per_class` images of every species. The first k of a larger request are the k of a
        smaller one (a class's i-th image depends only on (world seed, split, class, i)).
        masks=True also returns where the markings and the thin parts sit (e.g. to weight a reconstruction
        loss)."""
        labels, seeds = self.split_seeds(split, per_class)
        renders = [self.render(int(c), int(s), masks=masks) for c, s in zip(labels, seeds)]
        images = np.stack([r.image for r in renders])
        if not masks:
            return Split(split, images, labels, seeds)

        def union(kind: str) -> np.ndarray:  # [N,H,W]: per image, any of its `kind` masks
            return np.stack([np.any(np.stack(list(getattr(r, kind).values())), 0) for r in renders])

        return Split(split, images, labels, seeds, union("masks"), union("parts"))

    # ------------------------------------------------------------------ drawing
    def render(self, label: int, seed: int, masks: bool = True) -> Render:
        """One image of species `label`; pose, background and jitter depend on `seed` only.
        masks=False skips the marking and part masks (faster; `Render.masks`, `.parts` are then empty)."""
        if not 0 <= int(label) < self.num_classes:
            raise ValueError(f"species index {label} out of range: the world has {self.num_classes} species")
        sp = self.species[int(label)]
        fam = self.families[self._family_index[sp.family]]
        canvas, drawn, parts, flip = draw(fam, sp, seed, self.image_size * SUPERSAMPLE, self.nuisance, self._layout)
        small = cv2.resize(canvas, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)
        image = np.clip(np.round(small * 255), 0, 255).astype(np.uint8)
        if flip:
            image = image[:, ::-1]
        if not masks:
            return Render(np.ascontiguousarray(image), {})

        def small(m: np.ndarray) -> np.ndarray:  # canvas-resolution float mask -> image-size bool, flipped like it
            m = cv2.resize(m, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA) > 0
            return np.ascontiguousarray(m[:, ::-1] if flip else m)

        return Render(np.ascontiguousarray(image), {k: small(m) for k, m in drawn.items()},
                      {k: small(m) for k, m in parts.items()})


def _seed(world: int, split: int, label: int, index: int) -> int:
    return int(np.random.SeedSequence([world, split, label, index]).generate_state(1, np.uint32)[0])


