"""Measurements of generated images on the built-in world, shared by `make demo` and `make bench-quality`.

- `fidelity`: does an image show its intended species (and family)? Scored by a named classifier
  that did not guide the images (the caller says which; `higfa.world.scorer` is the default one
  of the bench, the oracle the demo's), plus the guide's own verdict for the fooling gap.
- `sharpness` / `matched_blur` / `blur_images`: how soft the samples are, and the Gaussian blur that
  makes real images as soft (to check a scorer is fair to blurry samples).
- `contour_f1`: how closely a sample follows its (transformed) contour — edge F1 between the
  contour's edges and the sample's Canny edges with a pixel tolerance.

Images are uint8 [N,H,W,3] RGB throughout; targets int [N] species indices.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..classifier import Classifier
from ..training import predict


def fidelity(scorer: Classifier, images: np.ndarray, targets: np.ndarray, family: np.ndarray,
             scorer_name: str, guide: Classifier | None = None) -> dict:
    """Species/family accuracy and mean p(target) by `scorer` ([K] family index per species in
    `family`), per-image predictions, and, with `guide`, the guide's own species accuracy and predictions."""
    targets = np.asarray(targets, dtype=np.int64)
    probs = predict(scorer, images)
    pred = probs.argmax(1).numpy()
    idx = np.arange(len(targets))
    out = {"scorer": scorer_name,
           "species": float((pred == targets).mean()),
           "family": float((family[pred] == family[targets]).mean()),
           "p_target": float(probs[idx, targets].mean()),
           "pred": pred.tolist(), "p_target_each": probs[idx, targets].tolist()}
    if guide is not None:
        gprobs = predict(guide, images)
        out["guide_pred"] = gprobs.argmax(1).numpy().tolist()
        out["guide_species"] = float((gprobs.argmax(1).numpy() == targets).mean())
        out["guide_p_target"] = float(gprobs[idx, targets].mean())
    return out


def blur_images(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with σ pixels (0: unchanged copy), uint8 in and out."""
    if sigma <= 0:
        return np.array(images, copy=True)
    return np.stack([cv2.GaussianBlur(im, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)
                     for im in images])


def sharpness(images: np.ndarray) -> float:
    """Mean variance of the Laplacian of the grey image (higher: sharper)."""
    vals = [cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for im in images]
    return float(np.mean(vals))


BLUR_SIGMAS = tuple(round(0.1 * i, 1) for i in range(21))  # 0.0 .. 2.0 px


def matched_blur(real: np.ndarray, samples: np.ndarray, sigmas=BLUR_SIGMAS) -> float:
    """The σ (from `sigmas`) whose blurred real images have the sharpness closest to the samples'."""
    target = sharpness(samples)
    errs = [abs(sharpness(blur_images(real, s)) - target) for s in sigmas]
    return float(sigmas[int(np.argmin(errs))])


def contour_f1(contours: np.ndarray | torch.Tensor, images: np.ndarray, tolerance: int = 2,
               low: int = 120, high: int = 200) -> dict:
    """Edge F1 between contours (the ControlNet hints: [N,3,H,W] float in [0,1] or [N,H,W(,3)],
    edges bright) and the Canny edges (low/high, the world's detector) of the samples, each edge
    pixel matched within `tolerance` px (a (2t+1)² square). Returns mean precision, recall, F1."""
    c = contours.numpy() if isinstance(contours, torch.Tensor) else np.asarray(contours)
    if c.ndim == 4 and c.shape[1] == 3:
        c = c.transpose(0, 2, 3, 1)
    if c.ndim == 4:
        c = c.max(-1)
    c = c > (0.5 if c.dtype.kind == "f" else 127)
    kernel = np.ones((2 * tolerance + 1,) * 2, np.uint8)
    p, r, f = [], [], []
    for ref, im in zip(c, images):
        edges = cv2.Canny(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), low, high) > 0
        ref_d = cv2.dilate(ref.astype(np.uint8), kernel) > 0
        edg_d = cv2.dilate(edges.astype(np.uint8), kernel) > 0
        prec = float((edges & ref_d).sum() / max(1, edges.sum()))
        rec = float((ref & edg_d).sum() / max(1, ref.sum()))
        p.append(prec)
        r.append(rec)
        f.append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
    return {"precision": float(np.mean(p)), "recall": float(np.mean(r)), "f1": float(np.mean(f)),
            "tolerance_px": tolerance}


def kid(x: torch.Tensor, y: torch.Tensor, subsets: int = 100, subset_size: int = 200, seed: int = 0) -> float:
    """Kernel Inception Distance (Bińkowski et al. 2018) between feature sets x [N,D] and y [M,D]: the
    unbiased MMD² with the cubic polynomial kernel k(a, b) = (a·b / D + 1)³, averaged over random
    subsets of min(subset_size, N, M) rows (as torch-fidelity / clean-fid do). 0 for one distribution;
    unbiased, so it can be slightly negative. Here the features are the world oracle's, not Inception's."""
    x, y = x.double(), y.double()
    m = min(subset_size, len(x), len(y))
    if m < 2:
        return float("nan")
    d = x.shape[1]
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=gen)[:m]]
        b = y[torch.randperm(len(y), generator=gen)[:m]]
        kxx, kyy, kxy = ((u @ v.T / d + 1) ** 3 for u, v in ((a, a), (b, b), (a, b)))
        off = (kxx.sum() - kxx.diag().sum() + kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
        vals.append(float(off - 2 * kxy.mean()))
    return float(np.mean(vals))


def _pairwise_mean(x: torch.Tensor, metric: str) -> float:
    """Mean distance over distinct pairs of rows of x [n, d] (nan with fewer than 2 rows)."""
    if len(x) < 2:
        return float("nan")
    if metric == "cosine":
        f = torch.nn.functional.normalize(x, dim=1)
        d = 1 - f @ f.T
    else:
        d = torch.cdist(x, x) / x.shape[1] ** 0.5  # RMS distance
    n = len(x)
    return float((d.sum() - d.diag().sum()) / (n * (n - 1)))


def _mean_finite(values) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def diversity(images: np.ndarray, labels: np.ndarray, feats: torch.Tensor, source_images: np.ndarray | None = None,
              source_feats: torch.Tensor | None = None) -> dict:
    """Mean pairwise distance among same-label images, in features [N,D] (cosine) and pixels (RMS
    over [0,1] values), and, with sources, mean distance of each image to its source."""
    pix = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    within_f = [_pairwise_mean(feats[labels == c], "cosine") for c in np.unique(labels)]
    within_p = [_pairwise_mean(pix[labels == c], "rms") for c in np.unique(labels)]
    out = {"within_class_feature": _mean_finite(within_f), "within_class_pixel": _mean_finite(within_p)}
    if source_images is not None and source_feats is not None:
        sp = torch.from_numpy(source_images.reshape(len(source_images), -1).astype(np.float32) / 255.0)
        f, s = torch.nn.functional.normalize(feats, dim=1), torch.nn.functional.normalize(source_feats, dim=1)
        out["to_source_feature"] = float((1 - (f * s).sum(1)).mean())
        out["to_source_pixel"] = float(((pix - sp) ** 2).mean(1).sqrt().mean())
    return out


@torch.no_grad()
def vae_roundtrip(vae, images: np.ndarray, batch: int = 100) -> np.ndarray:
    """Encode (latent mean) and decode uint8 images [N,H,W,3] with a diffusers AutoencoderKL."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
        z = vae.encode(x.to(vae.device)).latent_dist.mean
        y = ((vae.decode(z).sample.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        out.append(y.permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)
