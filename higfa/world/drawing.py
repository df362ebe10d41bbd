"""How a world image is drawn: pose, background, the bird and its markings, and the nuisance layers.

Everything here is a pure function of (family, species, render seed, world settings). Every random number is drawn
for every species in the same order, so two species of a family rendered with one seed differ exactly inside the
marking masks. The built-in `tinybirds` world uses none of the nuisance layers (`Nuisance.extras` false): its
images and random stream are what they always were; `finebirds` (finebirds.py) switches them on, drawing their
numbers from a second stream so the first one never shifts.

Canvas: HxWx3 float32 RGB in [0, 1] at SUPERSAMPLE x the image size; the caller area-downsamples it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

Color = tuple[float, float, float]


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
    wing_bars: int = 1  # bars drawn when wing_bar is set (2 needs a world with two wing-bar slots)
    tail_band: Color | None = None  # drawn only in a world whose markings include it
    breast_spots: Color | None = None  # likewise


@dataclass(frozen=True)
class Nuisance:
    """Ranges of what varies from image to image independently of the species (all from the render seed)."""

    scale: tuple[float, float] = (0.85, 1.12)  # x the family size
    shift: tuple[float, float] = (0.08, 0.06)  # ± fraction of the image, x and y
    rotate: float = 15.0  # ± degrees
    shade: tuple[float, float] = (0.88, 1.1)  # body brightness factor
    # Layers the tinybirds world does not draw (0: off):
    colour_jitter: float = 0.0  # body/belly colour factor 1 ± this per channel: individuals of a species differ
    clutter: int = 0  # up to this many twigs, leaves and berries (in marking colours) behind the bird
    occlusion: float = 0.0  # probability of a leaf cluster in front of part of the bird (never most of a marking)
    light: float = 0.0  # strength of a colour cast and a directional light gradient over the whole image

    @property
    def extras(self) -> bool:
        return bool(self.colour_jitter or self.clutter or self.occlusion or self.light)


@dataclass(frozen=True)
class Layout:
    """Where a world's markings sit (the same for all its species): which markings it has masks for, how many
    wing-bar slots (1: one bar as in tinybirds; 2: two thin parallel bars, a 1-bar species draws the first),
    and the size of the markings relative to tinybirds'."""

    markings: tuple[str, ...]
    wing_bar_slots: int = 1
    marking_scale: float = 1.0


@dataclass(frozen=True)
class Pose:
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
    def draw(cls, rng: np.random.Generator, fam: Family, size: int, nu: Nuisance) -> "Pose":
        # Every draw happens for every species, so species never shift the random stream.
        scale = size * 0.4 * fam.size * rng.uniform(*nu.scale)
        return cls(cx=size * (0.5 + rng.uniform(-nu.shift[0], nu.shift[0])),
                   cy=size * (0.5 + rng.uniform(-nu.shift[1], nu.shift[1])),
                   scale=scale, angle=math.radians(rng.uniform(-nu.rotate, nu.rotate)), flip=bool(rng.uniform() < 0.5),
                   wing_angle=rng.uniform(-8, 8), head_dx=rng.uniform(-0.04, 0.04), head_dy=rng.uniform(-0.04, 0.05),
                   tail_dangle=rng.uniform(-8, 8), shade=rng.uniform(*nu.shade), branch_angle=rng.uniform(-10, 10))

    def to_px(self, x: float, y: float) -> tuple[float, float]:
        """Canonical (x forward, y up) -> canvas pixel (x right, y down)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.cx + self.scale * (c * x - s * y), self.cy - self.scale * (s * x + c * y)


def draw(fam: Family, sp: Species, seed: int, size: int, nu: Nuisance, layout: Layout
         ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], bool]:
    """(canvas [size,size,3] float32, marking masks, part masks (canvas resolution, float32 0/1), flip)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) % 2**63, 0x8127]))
    pose = Pose.draw(rng, fam, size, nu)
    canvas = background(rng, size)
    if not nu.extras:
        masks, parts = draw_bird(canvas, fam, sp, pose, layout)
        return canvas, masks, parts, pose.flip
    extra = np.random.default_rng(np.random.SeedSequence([int(seed) % 2**63, 0x8128]))
    if nu.colour_jitter:
        j = extra.uniform(1 - nu.colour_jitter, 1 + nu.colour_jitter, size=(2, 3))
        fam = replace(fam, body=_mul(fam.body, j[0]), belly=_mul(fam.belly, j[1]))
    if nu.clutter:
        _clutter(canvas, extra, nu.clutter)
    masks, parts = draw_bird(canvas, fam, sp, pose, layout)
    if nu.occlusion:
        _occlude(canvas, extra, nu.occlusion, pose, masks)
    if nu.light:
        _light(canvas, extra, nu.light)
    return canvas, masks, parts, pose.flip


def _mul(c: Color, f: np.ndarray) -> Color:
    return tuple(float(min(1.0, v * k)) for v, k in zip(c, f))


def background(rng: np.random.Generator, size: int, low: int = 32) -> np.ndarray:
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


# Clutter colours: leaf greens and browns, and berries in the markings' own colours (red, yellow, white, black),
# so a classifier cannot find a species by looking for a colour anywhere in the image.
_LEAVES = np.array([[0.25, 0.45, 0.18], [0.4, 0.55, 0.2], [0.55, 0.5, 0.22], [0.35, 0.3, 0.18]])
_BERRIES = np.array([[0.9, 0.1, 0.08], [0.98, 0.85, 0.1], [0.97, 0.97, 0.95], [0.08, 0.07, 0.07], [1.0, 0.55, 0.0]])


def _clutter(canvas: np.ndarray, rng: np.random.Generator, most: int) -> None:
    """Twigs, leaves and berries behind the bird, in place (sharp: the bird is not the only detail)."""
    size = canvas.shape[0]
    n = int(rng.integers(most // 2, most + 1))
    kinds = rng.integers(0, 3, size=n)
    for kind in kinds:
        x, y = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, 180), rng.uniform(0.06, 0.2) * size
        if kind == 0:  # twig
            dx, dy = math.cos(math.radians(angle)) * length, math.sin(math.radians(angle)) * length
            cv2.line(canvas, (int((x - dx) * 16), int((y - dy) * 16)), (int((x + dx) * 16), int((y + dy) * 16)),
                     (0.3, 0.22, 0.14), max(1, int(size * 0.012)), cv2.LINE_AA, 4)
        elif kind == 1:  # leaf
            c = _LEAVES[rng.integers(len(_LEAVES))] * rng.uniform(0.8, 1.15)
            cv2.ellipse(canvas, (int(x * 16), int(y * 16)), (int(length * 0.5 * 16), int(length * 0.2 * 16)), angle,
                        0, 360, tuple(float(v) for v in np.clip(c, 0, 1)), -1, cv2.LINE_AA, 4)
        else:  # a few berries
            c = _BERRIES[rng.integers(len(_BERRIES))]
            for _ in range(int(rng.integers(1, 4))):
                bx, by = x + rng.uniform(-1, 1) * size * 0.03, y + rng.uniform(-1, 1) * size * 0.03
                cv2.circle(canvas, (int(bx * 16), int(by * 16)), int(size * 0.014 * 16), tuple(float(v) for v in c),
                           -1, cv2.LINE_AA, 4)


def _occlude(canvas: np.ndarray, rng: np.random.Generator, p: float, pose: Pose, masks: dict[str, np.ndarray]
             ) -> None:
    """With probability p, a leaf cluster in front of the bird, in place, placed where it covers at most 20 % of
    each marking's region (an image must still show its species); none if no candidate place does. The masks
    depend on the family only, so one seed occludes every species of a family alike."""
    draws = rng.uniform(size=(6, 4))  # 6 candidate places (x, y, angle, size): the same count whatever is accepted
    colour = _LEAVES[rng.integers(len(_LEAVES))] * rng.uniform(0.7, 1.0)
    if rng.uniform() >= p:
        return
    areas = {k: max(float(m.sum()), 1.0) for k, m in masks.items()}
    for u, v, a, s in draws:
        cx, cy = pose.to_px(-0.9 + 1.8 * u, -0.7 + 0.9 * v)
        axes = (int(pose.scale * (0.22 + 0.2 * s) * 16), int(pose.scale * (0.1 + 0.08 * s) * 16))
        leaf = np.zeros(canvas.shape[:2], np.float32)
        for k in (-1, 0, 1):  # three overlapping leaves fanning out
            cv2.ellipse(leaf, (int(cx * 16), int(cy * 16)), axes, 180 * a + 35 * k, 0, 360, 1.0, -1, cv2.LINE_AA, 4)
        if all(float((leaf * m).sum()) <= 0.2 * areas[k] for k, m in masks.items()):
            shade = leaf[..., None] * np.linspace(0.85, 1.1, 3, dtype=np.float32)[None, None, ::-1]
            canvas[:] = canvas * (1 - leaf[..., None]) + leaf[..., None] * np.clip(colour * shade, 0, 1)
            return


def _light(canvas: np.ndarray, rng: np.random.Generator, strength: float) -> None:
    """A colour cast and a linear light gradient in a random direction, in place."""
    size = canvas.shape[0]
    cast = 1 + rng.uniform(-0.5, 0.5, 3) * strength
    theta, amount = rng.uniform(0, 2 * math.pi), rng.uniform(-1, 1) * strength
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    grad = 1 + amount * (math.cos(theta) * ramp[None, :] + math.sin(theta) * ramp[:, None])
    canvas[:] = np.clip(canvas * grad[..., None] * cast.astype(np.float32), 0, 1)


def draw_bird(canvas: np.ndarray, fam: Family, sp: Species, pose: Pose, layout: Layout
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Draw the bird in place; return the marking masks and the PARTS masks (canvas resolution, float32 0/1)."""
    P = pose.to_px
    deg = math.degrees(pose.angle)
    shade = pose.shade
    body = tuple(float(min(1.0, c * shade)) for c in fam.body)
    dark = tuple(c * 0.62 for c in body)
    belly = tuple(float(min(1.0, c * shade)) for c in fam.belly)
    size = canvas.shape[0]
    ms = layout.marking_scale
    masks = {m: np.zeros((size, size), np.float32) for m in layout.markings}
    parts = {"legs": np.zeros((size, size), np.float32)}

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

    def across(t: float, half: float) -> list[tuple[float, float]]:  # the tail's edge points at t in [0,1] from root
        cx, cy = root[0] + (tip[0] - root[0]) * t, root[1] + (tip[1] - root[1]) * t
        return [(cx + nx * w * half, cy + ny * w * half), (cx - nx * w * half, cy - ny * w * half)]

    tail = [(root[0] + nx * w * 0.35, root[1] + ny * w * 0.35), (tip[0] + nx * w * 0.5, tip[1] + ny * w * 0.5),
            (tip[0] - nx * w * 0.5, tip[1] - ny * w * 0.5), (root[0] - nx * w * 0.35, root[1] - ny * w * 0.35)]
    poly(canvas, tail, dark)
    if "tail_band" in masks:  # a band across the tail near its tip
        (a0, a1), (b0, b1) = across(0.62, 0.47), across(0.62 + 0.16 * ms, 0.49)
        band = [a0, b0, b1, a1]
        poly(masks["tail_band"], band, 1.0)
        if sp.tail_band is not None:
            poly(canvas, band, sp.tail_band)
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
    _wing_bars(canvas, masks, sp, layout, ellipse, wa, bw)
    # breast spots: a fixed pattern of small dots on the belly (where they would sit is the same for every species)
    if "breast_spots" in masks:
        for sx, sy in ((0.16, -0.42), (0.3, -0.36), (0.24, -0.6), (0.38, -0.55), (0.1, -0.66)):
            x, y = sx * bw / 0.55, sy * bh
            ellipse(masks["breast_spots"], x, y, 0.05 * ms, 0.05 * ms, 0, 1.0)
            if sp.breast_spots is not None:
                # 0.042 (was 0.032: 1 px dots, the markings the VAE lost most often, 156 of 280 round-trip errors)
                ellipse(canvas, x, y, 0.042 * ms, 0.042 * ms, 0, sp.breast_spots)
    # crown patch
    cx, cy = hx - hr * 0.05, hy + hr * 0.68
    if "crown" in masks:
        ellipse(masks["crown"], cx, cy, hr * 0.62 * ms, hr * 0.36 * ms, -10, 1.0)
    if sp.crown is not None:
        ellipse(canvas, cx, cy, hr * 0.62 * ms, hr * 0.36 * ms, -10, sp.crown)
    # beak
    bx0 = hx + hr * 0.85
    beak = [(bx0, hy + fam.beak_width * 0.5), (bx0 + fam.beak_length, hy - 0.02), (bx0, hy - fam.beak_width * 0.5)]
    if "beak" in masks:
        poly(masks["beak"], beak, 1.0)
    poly(canvas, beak, sp.beak)
    # eye ring and eye
    ex, ey = hx + hr * 0.38, hy + hr * 0.18
    ring = 0.1 if ms == 1.0 else 0.052 + 0.048 * ms  # the eye stays the same size; the ring around it thins
    if "eye_ring" in masks:
        ellipse(masks["eye_ring"], ex, ey, ring, ring, 0, 1.0)
    if sp.eye_ring is not None:
        ellipse(canvas, ex, ey, ring, ring, 0, sp.eye_ring)
    ellipse(canvas, ex, ey, 0.052, 0.052, 0, (0.04, 0.04, 0.05))
    return masks, parts


def _wing_bars(canvas: np.ndarray, masks: dict, sp: Species, layout: Layout, ellipse, wa: float, bw: float) -> None:
    """One bar across the wing (tinybirds), or `wing_bar_slots` = 2 thin parallel ones (a 1-bar species draws the
    upper one). The mask covers every slot."""
    c, s = math.cos(math.radians(wa)), math.sin(math.radians(wa))
    wbx, wby = -0.08 + 0.06 * c - (-0.02) * s, 0.04 + 0.06 * s + (-0.02) * c
    if layout.wing_bar_slots == 1:
        if "wing_bar" in masks:
            ellipse(masks["wing_bar"], wbx, wby, bw * 0.5, 0.055, wa, 1.0)
        if sp.wing_bar is not None:
            ellipse(canvas, wbx, wby, bw * 0.5, 0.055, wa, sp.wing_bar)
        return
    half = 0.034 * layout.marking_scale  # half-thickness of one thin bar
    for k, off in enumerate((0.05, -0.05)):  # along the wing's normal
        x, y = wbx - off * s, wby + off * c
        if "wing_bar" in masks:
            ellipse(masks["wing_bar"], x, y, bw * 0.48, half + 0.015, wa, 1.0)
        if sp.wing_bar is not None and k < sp.wing_bars:
            ellipse(canvas, x, y, bw * 0.48, half, wa, sp.wing_bar)
