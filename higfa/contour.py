"""Transformed contours: edge maps of a real image, geometrically warped for diversity.

Images come as numpy HxWxC (uint8 0..255 or float 0..1; C = 1, 3 or 4; HxW gray too) or as torch
BxHxWxC float batches (ComfyUI's IMAGE layout). Outputs keep the input's container and dtype and
always have 3 channels (white edges on black). OpenCV does the pixel work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

EDGE_METHODS = ("canny", "soft")
WARP_KINDS = ("elastic", "tps", "none")


# ---------------------------------------------------------------------------- conversions
def to_rgb_float(image: np.ndarray, name: str = "image") -> np.ndarray:
    """HxW / HxWx{1,3,4}, uint8 or float -> HxWx3 float32 in [0,1]. Alpha is composited over black."""
    a = np.asarray(image)
    if a.size == 0 or a.ndim not in (2, 3) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty or not an image (shape {a.shape}): pass an HxW or HxWxC picture")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name} has {a.shape[2]} channels: expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    f = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if not np.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if f.shape[2] == 4:
        f = f[:, :, :3] * f[:, :, 3:4]
    elif f.shape[2] == 1:
        f = np.repeat(f, 3, axis=2)
    return np.clip(f, 0.0, 1.0)


def _like(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """float32 HxWx3 [0,1] -> the dtype of `ref` (uint8 or float)."""
    if ref.dtype == np.uint8:
        return np.round(out * 255.0).astype(np.uint8)
    return out.astype(ref.dtype if np.issubdtype(ref.dtype, np.floating) else np.float32)


def _map_images(fn, images: Any, name: str) -> Any:
    """Apply fn(HxWx3 float32, index) -> list of HxWx3 float32 to a numpy image or a torch batch."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"{name} must be a BxHxWxC image batch, got shape {tuple(images.shape)}")
        outs = []
        for i, img in enumerate(images.detach().cpu().float().numpy()):
            outs.extend(fn(to_rgb_float(img, f"{name}[{i}]"), i))
        return torch.from_numpy(np.stack(outs)).to(images.dtype)
    ref = np.asarray(images)
    outs = fn(to_rgb_float(ref, name), 0)
    return _like(outs[0], ref) if len(outs) == 1 else [_like(o, ref) for o in outs]


# ---------------------------------------------------------------------------- edges
@dataclass(frozen=True)
class EdgeDetector:
    """Canny (binary) or soft gradient-magnitude edges. Defaults follow SaSPA (Canny 120/200).

    blur: Gaussian σ in pixels applied first (0 = none). auto: thresholds from the image median,
    low = (1 − auto_sigma)·median, high = (1 + auto_sigma)·median (overrides low/high).
    """

    method: str = "canny"
    low: float = 120.0
    high: float = 200.0
    blur: float = 0.0
    auto: bool = False
    auto_sigma: float = 0.33

    def __post_init__(self) -> None:
        if self.method not in EDGE_METHODS:
            raise ValueError(f"edge method {self.method!r}: choose one of {EDGE_METHODS}")
        if not 0 <= self.low <= 255 or not 0 <= self.high <= 255:
            raise ValueError(f"Canny thresholds must lie in [0, 255], got low={self.low}, high={self.high}")
        if self.low > self.high:
            raise ValueError(f"Canny low threshold ({self.low}) must not exceed the high threshold ({self.high})")
        if self.blur < 0:
            raise ValueError(f"edge blur = {self.blur}: must be >= 0 (Gaussian σ in pixels)")

    def edges(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 float32 [0,1] -> HxWx3 float32 [0,1] edge map."""
        gray = cv2.cvtColor(np.round(rgb * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
        if self.blur > 0:
            gray = cv2.GaussianBlur(gray, (0, 0), self.blur)
        if self.method == "canny":
            low, high = self.low, self.high
            if self.auto:
                med = float(np.median(gray))
                low, high = max(0.0, (1 - self.auto_sigma) * med), min(255.0, (1 + self.auto_sigma) * med)
            e = cv2.Canny(gray, low, high).astype(np.float32) / 255.0
        else:
            g = gray.astype(np.float32) / 255.0
            mag = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
            top = float(np.percentile(mag, 99.5))
            e = np.clip(mag / top, 0, 1) if top > 1e-6 else np.zeros_like(mag)
        return np.repeat(e[:, :, None], 3, axis=2)

    def __call__(self, images: Any) -> Any:
        return _map_images(lambda rgb, i: [self.edges(rgb)], images, "image")


def extract_edges(images: Any, method: str = "canny", low: float = 120.0, high: float = 200.0,
                  blur: float = 0.0, auto: bool = False) -> Any:
    return EdgeDetector(method, low, high, blur, auto)(images)


# ---------------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class SampledTransform:
    """One draw of the random transform, reusable on the source image (img2img variants)."""

    matrix: np.ndarray  # 2x3 affine, output pixel <- input pixel (forward map)
    flow: np.ndarray | None  # HxWx2 backward displacement in pixels, or None
    erase_boxes: tuple[tuple[int, int, int, int], ...]  # (x, y, w, h)
    dilate: int  # extra edge thickness in pixels

    def geometry(self, rgb: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Affine + warp only (apply this to the source image for a matching img2img start)."""
        h, w = rgb.shape[:2]
        out = rgb
        if not np.allclose(self.matrix, np.eye(2, 3)):
            out = cv2.warpAffine(out, self.matrix, (w, h), flags=interpolation, borderMode=cv2.BORDER_REFLECT_101
                                 if interpolation != cv2.INTER_NEAREST else cv2.BORDER_CONSTANT)
        if self.flow is not None:
            gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            out = cv2.remap(out, gx + self.flow[..., 0], gy + self.flow[..., 1], interpolation,
                            borderMode=cv2.BORDER_REFLECT_101)
        return out.reshape(rgb.shape)

    def contour(self, edges: np.ndarray) -> np.ndarray:
        """Full transform of an HxWx3 float edge map: geometry, edge dropout, thickness."""
        binary = bool(np.isin(edges, (0.0, 1.0)).all())
        out = self.geometry(edges, cv2.INTER_LINEAR)
        # Bilinear warping greys out thin binary lines; re-binarise low so they stay connected.
        if binary and out is not edges:
            out = (out > 0.25).astype(np.float32)
        if self.erase_boxes:
            out = out.copy()
            for x, y, bw, bh in self.erase_boxes:
                out[y:y + bh, x:x + bw] = 0.0
        if self.dilate > 0:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * self.dilate + 1, 2 * self.dilate + 1))
            out = cv2.dilate(out, k)
        return out.reshape(edges.shape)


@dataclass(frozen=True)
class ContourTransform:
    """Seeded random transform of a contour. Every range is its value at amount = 1; `amount`
    in [0, 1] scales them all, and amount = 0 is the identity.

    rotation, shear: ± degrees. scale: ± fraction. translate: ± fraction of the size. flip:
    probability of a horizontal flip. warp: elastic/TPS displacement as a fraction of the size,
    warp_smoothness: elastic σ (or TPS grid spacing) as a fraction of the size. erase_patches:
    up to this many edge patches dropped, each up to erase_size (fraction of the short side).
    thickness: up to this many pixels of extra edge width.
    """

    amount: float = 0.5
    rotation: float = 15.0
    scale: float = 0.15
    translate: float = 0.08
    shear: float = 8.0
    flip: float = 0.5
    warp: float = 0.04
    warp_kind: str = "elastic"
    warp_smoothness: float = 0.12
    erase_patches: int = 3
    erase_size: float = 0.2
    thickness: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.amount <= 1.0:
            raise ValueError(f"contour transform 'amount' = {self.amount}: must lie in [0, 1] (0 = no transform)")
        for f in ("rotation", "scale", "translate", "shear", "flip", "warp", "warp_smoothness", "erase_size",
                  "erase_patches", "thickness"):
            if getattr(self, f) < 0:
                raise ValueError(f"contour transform '{f}' = {getattr(self, f)}: ranges must be >= 0")
        if self.flip > 1 or self.scale >= 1 or self.erase_size > 1:
            raise ValueError("contour transform: 'flip' is a probability (<= 1), 'scale' must be < 1 and "
                             "'erase_size' a fraction (<= 1)")
        if self.warp_kind not in WARP_KINDS:
            raise ValueError(f"contour transform 'warp_kind' = {self.warp_kind!r}: choose one of {WARP_KINDS}")

    def replace(self, **changes: Any) -> "ContourTransform":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sample(self, height: int, width: int, seed: int | tuple[int, ...]) -> SampledTransform:
        """Draw the transform for an image of this size. Same seed, same transform."""
        parts = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
        rng = np.random.default_rng(np.random.SeedSequence([int(s) % 2**63 for s in parts]))
        a = self.amount

        def u(r: float) -> float:  # always draws, so a knob at 0 never reshuffles the other draws
            return float(rng.uniform(-1.0, 1.0)) * r

        rot, sc = u(self.rotation * a), u(self.scale * a)
        tx, ty = u(self.translate * a) * width, u(self.translate * a) * height
        sh = u(self.shear * a)
        flip = rng.uniform() < self.flip * a
        matrix = _affine(height, width, rot, 1.0 + sc, tx, ty, sh, flip)
        flow_seed = int(rng.integers(2**31))
        flow = None
        if self.warp * a > 0 and self.warp_kind != "none":
            frng = np.random.default_rng(flow_seed)
            mag = self.warp * a * max(height, width)
            flow = (_elastic_flow if self.warp_kind == "elastic" else _tps_flow)(
                height, width, mag, self.warp_smoothness, frng)
        n_erase = int(rng.integers(0, int(round(self.erase_patches * a)) + 1))
        side = max(1, int(self.erase_size * min(height, width)))
        boxes = []
        for _ in range(n_erase):
            bw, bh = (max(1, int(side * rng.uniform(0.5, 1.0))) for _ in range(2))
            boxes.append((int(rng.integers(0, max(1, width - bw + 1))), int(rng.integers(0, max(1, height - bh + 1))),
                          bw, bh))
        dilate = int(rng.integers(0, int(round(self.thickness * a)) + 1))
        return SampledTransform(matrix, flow, tuple(boxes), dilate)

    def __call__(self, contours: Any, seed: int, variants: int = 1, first_index: int = 0) -> Any:
        """Transform edge maps. Variant v of image i uses seed (seed, first_index + i, v); a torch
        batch of B images gives B·variants outputs (each image's variants together); a numpy image
        gives one image (variants = 1) or a list. `first_index` is the batch's position in its
        dataset, so feeding images one at a time draws the same transforms as one big batch."""
        if variants < 1:
            raise ValueError(f"variants = {variants}: need at least 1")

        def run(rgb: np.ndarray, i: int) -> list[np.ndarray]:
            if self.amount == 0:
                return [rgb] * variants
            h, w = rgb.shape[:2]
            return [self.sample(h, w, (seed, first_index + i, v)).contour(rgb) for v in range(variants)]

        return _map_images(run, contours, "contour")


def _affine(h: int, w: int, rot: float, scale: float, tx: float, ty: float, shear: float, flip: bool) -> np.ndarray:
    """2x3 matrix about the image centre: flip, shear, rotate+scale, translate."""
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    c = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=np.float64)
    f = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
    s = np.array([[1, np.tan(np.radians(shear)), 0], [0, 1, 0], [0, 0, 1]])
    r = np.vstack([cv2.getRotationMatrix2D((0, 0), rot, scale), [0, 0, 1]])
    t = np.array([[1, 0, cx + tx], [0, 1, cy + ty], [0, 0, 1]])
    return (t @ r @ s @ f @ c)[:2].astype(np.float64)


def _elastic_flow(h: int, w: int, mag: float, smooth: float, rng: np.random.Generator) -> np.ndarray:
    """Smoothed random displacement field, max |d| = mag pixels."""
    sigma = max(1.0, smooth * max(h, w))
    small = (max(2, int(w / sigma * 4)), max(2, int(h / sigma * 4)))  # blur on a coarse grid, then upsample
    d = rng.standard_normal((small[1], small[0], 2)).astype(np.float32)
    d = cv2.GaussianBlur(d, (0, 0), 2.0)
    d = cv2.resize(d, (w, h), interpolation=cv2.INTER_CUBIC)
    peak = float(np.abs(d).max())
    return d * (mag / peak) if peak > 0 else d


def _tps_flow(h: int, w: int, mag: float, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Thin-plate-spline displacement through a grid of randomly moved control points."""
    k = int(np.clip(round(1.0 / max(spacing, 1e-3)), 2, 8))
    ys, xs = np.meshgrid(np.linspace(0, h - 1, k), np.linspace(0, w - 1, k), indexing="ij")
    src = np.stack([xs.ravel(), ys.ravel()], 1)
    disp = rng.uniform(-mag, mag, src.shape)
    n = len(src)

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        r2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.where(r2 > 0, r2 * np.log(r2 + 1e-12), 0.0)

    P = np.hstack([np.ones((n, 1)), src])
    A = np.zeros((n + 3, n + 3))
    A[:n, :n], A[:n, n:], A[n:, :n] = kernel(src, src), P, P.T
    coef = np.linalg.solve(A + 1e-8 * np.eye(n + 3), np.vstack([disp, np.zeros((3, 2))]))
    step = max(1, min(h, w) // 32)  # evaluate on a coarse grid, then upsample
    gy, gx = np.meshgrid(np.arange(0, h, step, dtype=np.float64), np.arange(0, w, step, dtype=np.float64),
                         indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    flow = kernel(pts, src) @ coef[:n] + np.hstack([np.ones((len(pts), 1)), pts]) @ coef[n:]
    flow = flow.reshape(gy.shape[0], gy.shape[1], 2).astype(np.float32)
    return cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
