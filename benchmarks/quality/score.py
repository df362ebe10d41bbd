"""The quality bench's verdicts on generated images: fidelity by classifiers that did not guide them, the fooling
gap, diversity, contour adherence, KID, the confidence filter; and the diagnosis on real test images (the
scorer's accuracy blurred like the samples, the VAE ceiling)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from higfa.classifier import load_classifier
from higfa.judge import confidence_filter
from higfa.training import features, fooling_gap, to_tensor
from higfa.world import metrics

from .arms import Arm, shown


def filter_keep(arm: Arm, g: dict, device="cpu") -> np.ndarray:
    """[N] bool: the images of `g` (images [N,H,W,3] uint8, targets [N]) that the confidence filter keeps
    (`higfa.judge.confidence_filter`: p(target) >= the arm's threshold) by the arm's filter classifier, one that
    did not guide them; in eval mode, 256 images per forward, on `device`."""
    judge = load_classifier(arm.filter, device).float().eval()
    kept = confidence_filter(to_tensor(g["images"]).to(device), judge, g["targets"], arm.filter_threshold,
                             batch_size=256).kept
    keep = np.zeros(len(g["targets"]), dtype=bool)
    keep[kept] = True
    return keep


def score_arm(g: dict, arm: Arm, scorer, guide, oracle, fam, real, real_feats, test_oracle_feats) -> dict:
    """The fidelity, diversity and contour adherence of one arm's images. oracle_*: the world's
    oracle where it did not guide, else the independent scorer (`scored_by` says which); scorer_*:
    the independent scorer always."""
    t = g["targets"]
    f = metrics.fidelity(scorer, g["images"], t, fam, "scorer", guide=guide)
    feats = features(scorer, g["images"])
    d = metrics.diversity(g["images"], t, feats, real.images[g["source"]], real_feats[g["source"]])
    out = {"oracle_species": f["species"], "oracle_family": f["family"], "oracle_p_target": f["p_target"],
           "scored_by": "scorer", "scorer_species": f["species"], "scorer_family": f["family"],
           "guided_by": arm.guide_label, "guide_species": f["guide_species"],
           "guide_p_target": f["guide_p_target"], "pixel_diversity": d["within_class_pixel"],
           "feature_diversity": d["within_class_feature"], "to_source_pixel": d["to_source_pixel"],
           "to_source_feature": d["to_source_feature"], "n": int(len(t)), "seconds_per_image": g["seconds"] / len(t),
           "guided_sample_steps": g["guided_sample_steps"], "gated_sample_steps": g["gated_sample_steps"],
           "sharpness": metrics.sharpness(g["images"]),
           "contour_f1": {f"{tol}px": metrics.contour_f1(g["contours"], g["images"], tol)["f1"] for tol in (1, 2)},
           # distance to real test images in the world oracle's features (for the oracle-guided arm too: KID
           # measures the image distribution, not a verdict; lower is closer to real)
           "kid_oracle": metrics.kid(features(oracle, g["images"]), test_oracle_feats)}
    judged = f  # the verdict behind oracle_species: the scorer's, or the world oracle's where it did not guide
    if arm.guide != "oracle":  # the world's oracle may score only what it did not guide
        o = judged = metrics.fidelity(oracle, g["images"], t, fam, "world oracle")
        out |= {"world_oracle_species": o["species"], "world_oracle_family": o["family"],
                "oracle_species": o["species"], "oracle_family": o["family"], "oracle_p_target": o["p_target"],
                "scored_by": "world oracle"}
    # the guide's species accuracy minus the judge's behind oracle_species, on these images
    out["fooling_gap"] = fooling_gap(f["guide_pred"], judged["pred"], t)["fooling_gap"]
    if "keep" in g:
        out["filter"] = filter_record(g, arm, np.asarray(judged["pred"]), np.asarray(f["guide_pred"]), fam, feats,
                                      real, real_feats)
    return out


def filter_record(g: dict, arm: Arm, pred: np.ndarray, guide_pred: np.ndarray, fam, feats, real, real_feats) -> dict:
    """What the confidence filter keeps (`g["keep"]`, [N] bool), and how right the kept images are by `pred` (the
    judge behind the arm's oracle_species); the kept images are what `higfa augment --filter-classifier` leaves a
    user to train on."""
    t, kept = g["targets"], g["keep"]
    right, family_right = pred == t, fam[pred] == fam[t]
    out = {"classifier": shown(arm.filter), "threshold": arm.filter_threshold, "kept": float(kept.mean()),
           "oracle_species_dropped": float(right[~kept].mean()) if (~kept).any() else None}
    if kept.any():
        k = np.flatnonzero(kept)
        dk = metrics.diversity(g["images"][k], t[k], feats[k], real.images[g["source"][k]],
                               real_feats[g["source"][k]])
        gap = fooling_gap(guide_pred[k], pred[k], t[k])
        out |= {"oracle_species_kept": gap["independent_accuracy"],
                "oracle_family_kept": float(family_right[k].mean()), "guide_species_kept": gap["guided_accuracy"],
                "fooling_gap_kept": gap["fooling_gap"],
                "pixel_diversity_kept": dk["within_class_pixel"]}
    return out


def diagnosis(scorer, models, real, test, real_feats, test_oracle_feats, sample_set: np.ndarray, fam) -> dict:
    """The results' "real", scorer test accuracies and "ceiling" sections: the scorer on real test images made as
    soft as `sample_set` (the samples whose sharpness the blur matches) and after a VAE round trip."""
    real_section = {"fewshot": metrics.fidelity(scorer, real.images, real.labels, fam, "scorer")["species"],
                    "pixel_diversity": metrics.diversity(real.images, real.labels, real_feats)["within_class_pixel"]}
    sigma = metrics.matched_blur(test.images, sample_set)
    recon = metrics.vae_roundtrip(models.vae, test.images)
    blurred = metrics.blur_images(test.images, sigma)

    def acc(clf, images, name):
        return metrics.fidelity(clf, images, test.labels, fam, name)["species"]

    scorer_section = {"test": acc(scorer, test.images, "scorer"), "test_blurred": acc(scorer, blurred, "scorer"),
                      "matched_blur_sigma": sigma, "sharpness_samples": metrics.sharpness(sample_set),
                      "sharpness_test": metrics.sharpness(test.images),
                      "guide_test": acc(models.guidance, test.images, "guide"),
                      "world_oracle_test": acc(models.oracle, test.images, "world oracle"),
                      "world_oracle_test_blurred": acc(models.oracle, blurred, "world oracle")}
    ceiling = {"vae_oracle": acc(models.oracle, recon, "world oracle"), "vae_scored_by": "world oracle",
               "vae_scorer": acc(scorer, recon, "scorer"), "sharpness_vae": metrics.sharpness(recon),
               # KID references in the same oracle features: VAE round trips, and real few-shot images
               "kid_oracle_vae": metrics.kid(features(models.oracle, recon), test_oracle_feats),
               "kid_oracle_real_fewshot": metrics.kid(features(models.oracle, real.images), test_oracle_feats)}
    return {"real": real_section, "scorer": scorer_section, "ceiling": ceiling}


def scorer_info(scorer, path: Path) -> dict:
    """The independent scorer's file, architecture and sha256 (16 hex)."""
    return {"path": shown(str(path)), "architecture": scorer.architecture,
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}
