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

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

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

Color = tuple[float, float, float]


def model_path() -> Path:
    """The built-in world's diffusers folder (model_index.json, unet/, controlnet/, vae/, text_encoder/,
    tokenizer/, scheduler/) with guidance.safetensors and oracle.safetensors beside them."""
    return ASSETS


@dataclass(frozen=True)
class Family:
    """Large features shared by all species of a family (canonical units: body half-length ~0.6)."""

    name: str
    body: Color  # RGB in [0, 1]
    belly: Color
    size: float  # relative scale of the whole bird
    body_axes: tuple[float, float]  # body ellipse semi-axes
    head_radius: float
    tail_length: float
    tail_width: float
    tail_angle: float  # degrees below the horizontal, pointing back
    beak_length: float
    beak_width: float
    crest: float = 0.0  # crest height (0: none)


@dataclass(frozen=True)
class Species:
    """A family plus its markings. None means the marking is absent; beak is always drawn."""

    name: str
    family: str
    crown: Color | None = None
    wing_bar: Color | None = None
    eye_ring: Color | None = None
    beak: Color = (0.12, 0.1, 0.1)


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
    _family_index: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size = {self.image_size}: markings need at least 32 px (64 recommended)")
        names = [f.name for f in self.families]
        unknown = sorted({s.family for s in self.species} - set(names))
        if unknown:
            raise ValueError(f"species refer to unknown families {unknown}; known: {names}")
        object.__setattr__(self, "_family_index", {n: i for i, n in enumerate(names)})

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
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) % 2**63, 0x8127]))
        pose = _Pose.draw(rng, fam, self.image_size * SUPERSAMPLE)
        canvas = _background(rng, self.image_size * SUPERSAMPLE)
        drawn, parts = _draw_bird(canvas, fam, sp, pose)
        small = cv2.resize(canvas, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)
        image = np.clip(np.round(small * 255), 0, 255).astype(np.uint8)
        if pose.flip:
            image = image[:, ::-1]
        if not masks:
            return Render(np.ascontiguousarray(image), {})

        def small(m: np.ndarray) -> np.ndarray:  # canvas-resolution float mask -> image-size bool, flipped like it
            m = cv2.resize(m, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA) > 0
            return np.ascontiguousarray(m[:, ::-1] if pose.flip else m)

        return Render(np.ascontiguousarray(image), {k: small(m) for k, m in drawn.items()},
                      {k: small(m) for k, m in parts.items()})


def _seed(world: int, split: int, label: int, index: int) -> int:
    return int(np.random.SeedSequence([world, split, label, index]).generate_state(1, np.uint32)[0])


# ---------------------------------------------------------------------------- internals
@dataclass(frozen=True)
class _Pose:
    cx: float  # canvas pixels
    cy: float
    scale: float  # canvas pixels per canonical unit
    angle: float  # radians, counter-clockwise
    flip: bool
    wing_angle: float  # degrees
    head_dx: float
    head_dy: float
    tail_dangle: float
    shade: float  # body brightness jitter
    branch_angle: float  # degrees

    @classmethod
    def draw(cls, rng: np.random.Generator, fam: Family, size: int) -> "_Pose":
        # Every draw happens for every species, so species never shift the random stream.
        scale = size * 0.4 * fam.size * rng.uniform(0.85, 1.12)
        return cls(cx=size * (0.5 + rng.uniform(-0.08, 0.08)), cy=size * (0.5 + rng.uniform(-0.06, 0.06)),
                   scale=scale, angle=math.radians(rng.uniform(-15, 15)), flip=bool(rng.uniform() < 0.5),
                   wing_angle=rng.uniform(-8, 8), head_dx=rng.uniform(-0.04, 0.04), head_dy=rng.uniform(-0.04, 0.05),
                   tail_dangle=rng.uniform(-8, 8), shade=rng.uniform(0.88, 1.1), branch_angle=rng.uniform(-10, 10))

    def to_px(self, x: float, y: float) -> tuple[float, float]:
        """Canonical (x forward, y up) -> canvas pixel (x right, y down)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.cx + self.scale * (c * x - s * y), self.cy - self.scale * (s * x + c * y)


def _background(rng: np.random.Generator, size: int, low: int = 32) -> np.ndarray:
    """Soft vertical gradient (sky / foliage / sand hues) with blurred blobs, drawn at `low` px and
    upsampled (it has no fine detail). HxWx3 float32 at `size` px."""
    out_size, size = size, low
    palettes = np.array([[0.62, 0.75, 0.85], [0.55, 0.68, 0.5], [0.78, 0.74, 0.62], [0.7, 0.72, 0.7],
                         [0.5, 0.6, 0.62]])
    top, bottom = palettes[rng.integers(len(palettes), size=2)] * rng.uniform(0.85, 1.1, size=(2, 1))
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    canvas = (top * (1 - t) + bottom * t).astype(np.float32) * np.ones((1, size, 3), np.float32)
    blobs = np.zeros_like(canvas)
    for _ in range(int(rng.integers(2, 5))):
        c = palettes[rng.integers(len(palettes))] * rng.uniform(0.7, 1.0)
        center = tuple(int(v) for v in rng.uniform(0, size, 2))
        r = int(size * rng.uniform(0.08, 0.2))
        cv2.circle(blobs, center, r, tuple(float(v) for v in c), -1, cv2.LINE_AA)
    weight = cv2.GaussianBlur((blobs.sum(2) > 0).astype(np.float32), (0, 0), size * 0.04)[..., None]
    blobs = cv2.GaussianBlur(blobs, (0, 0), size * 0.04)
    canvas = np.clip(canvas * (1 - 0.6 * weight) + 0.6 * blobs, 0, 1).astype(np.float32)
    return cv2.resize(canvas, (out_size, out_size), interpolation=cv2.INTER_LINEAR)


def _draw_bird(canvas: np.ndarray, fam: Family, sp: Species, pose: _Pose
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Draw the bird in place; return the marking masks and the PARTS masks (canvas resolution, float32 0/1)."""
    P = pose.to_px
    deg = math.degrees(pose.angle)
    shade = pose.shade
    body = tuple(float(min(1.0, c * shade)) for c in fam.body)
    dark = tuple(c * 0.62 for c in body)
    belly = tuple(float(min(1.0, c * shade)) for c in fam.belly)
    size = canvas.shape[0]
    masks = {m: np.zeros((size, size), np.float32) for m in MARKINGS}
    parts = {m: np.zeros((size, size), np.float32) for m in PARTS}

    def pt(x, y):
        return tuple(int(round(v * 16)) for v in P(x, y))  # 4 fractional bits for cv2

    def ellipse(img, x, y, ax, ay, rot, color, thickness=-1):
        cv2.ellipse(img, pt(x, y), (int(ax * pose.scale * 16), int(ay * pose.scale * 16)), -(deg + rot), 0, 360,
                    color, thickness, cv2.LINE_AA, 4)

    def poly(img, pts, color):
        cv2.fillPoly(img, [np.array([pt(x, y) for x, y in pts], np.int32)], color, cv2.LINE_AA, 4)

    # branch under the feet
    bx, by = P(0.0, -0.62)
    ba = math.radians(pose.branch_angle) + pose.angle
    dx, dy = math.cos(ba) * size, -math.sin(ba) * size
    cv2.line(canvas, (int((bx - dx) * 16), int((by - dy) * 16)), (int((bx + dx) * 16), int((by + dy) * 16)),
             (0.36, 0.25, 0.15), max(2, int(0.07 * pose.scale)), cv2.LINE_AA, 4)
    # legs
    for lx in (-0.08, 0.1):
        for img, color in ((canvas, (0.2, 0.15, 0.1)), (parts["legs"], 1.0)):
            cv2.line(img, pt(lx, -0.25), pt(lx + 0.03, -0.62), color, max(1, int(0.035 * pose.scale)), cv2.LINE_AA, 4)
    # tail: a quadrilateral pointing back and down
    bw, bh = fam.body_axes
    ta = math.radians(fam.tail_angle + pose.tail_dangle)
    root = (-bw * 0.75, 0.02)
    tip = (root[0] - fam.tail_length * math.cos(ta), root[1] - fam.tail_length * math.sin(ta))
    nx, ny = -math.sin(ta), math.cos(ta)
    w = fam.tail_width
    tail = [(root[0] + nx * w * 0.35, root[1] + ny * w * 0.35), (tip[0] + nx * w * 0.5, tip[1] + ny * w * 0.5),
            (tip[0] - nx * w * 0.5, tip[1] - ny * w * 0.5), (root[0] - nx * w * 0.35, root[1] - ny * w * 0.35)]
    poly(canvas, tail, dark)
    # body and belly
    ellipse(canvas, 0, 0, bw, bh, 0, body)
    ellipse(canvas, 0.08, -bh * 0.35, bw * 0.72, bh * 0.55, 0, belly)
    # the legs' mask keeps only what stays visible: the tail and the body cover the legs' upper ends
    poly(parts["legs"], tail, 0.0)
    ellipse(parts["legs"], 0, 0, bw, bh, 0, 0.0)
    # head (and crest)
    hr = fam.head_radius
    hx, hy = bw * 0.78 + pose.head_dx, bh * 0.62 + pose.head_dy
    if fam.crest > 0:
        poly(canvas, [(hx - hr * 0.7, hy + hr * 0.5), (hx - hr * 0.9, hy + hr + fam.crest),
                      (hx + hr * 0.2, hy + hr * 0.8)],
             body)
    ellipse(canvas, hx, hy, hr, hr, 0, body)
    # wing (darker) and the wing bar marking
    wa = pose.wing_angle
    ellipse(canvas, -0.08, 0.04, bw * 0.72, bh * 0.5, wa, dark)
    c, s = math.cos(math.radians(wa)), math.sin(math.radians(wa))
    wbx, wby = -0.08 + 0.06 * c - (-0.02) * s, 0.04 + 0.06 * s + (-0.02) * c
    ellipse(masks["wing_bar"], wbx, wby, bw * 0.5, 0.055, wa, 1.0)
    if sp.wing_bar is not None:
        ellipse(canvas, wbx, wby, bw * 0.5, 0.055, wa, sp.wing_bar)
    # crown patch
    cx, cy = hx - hr * 0.05, hy + hr * 0.68
    ellipse(masks["crown"], cx, cy, hr * 0.62, hr * 0.36, -10, 1.0)
    if sp.crown is not None:
        ellipse(canvas, cx, cy, hr * 0.62, hr * 0.36, -10, sp.crown)
    # beak
    bx0 = hx + hr * 0.85
    beak = [(bx0, hy + fam.beak_width * 0.5), (bx0 + fam.beak_length, hy - 0.02), (bx0, hy - fam.beak_width * 0.5)]
    poly(masks["beak"], beak, 1.0)
    poly(canvas, beak, sp.beak)
    # eye ring and eye
    ex, ey = hx + hr * 0.38, hy + hr * 0.18
    ellipse(masks["eye_ring"], ex, ey, 0.1, 0.1, 0, 1.0)
    if sp.eye_ring is not None:
        ellipse(canvas, ex, ey, 0.1, 0.1, 0, sp.eye_ring)
    ellipse(canvas, ex, ey, 0.052, 0.052, 0, (0.04, 0.04, 0.05))
    return masks, parts

