"""higfa/world/metrics.py: the measurements shared by the demo and the quality bench."""

import cv2
import numpy as np
import pytest
import torch

from higfa.world import metrics


def disc_images(n=4, size=32):
    out = []
    for i in range(n):
        img = np.full((size, size, 3), 30, np.uint8)
        cv2.circle(img, (16, 16), 6 + i, (230, 200, 40), -1)
        out.append(img)
    return np.stack(out)


def test_contour_f1_is_one_on_its_own_edges_and_drops_when_shifted():
    images = disc_images()
    edges = np.stack([cv2.Canny(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), 120, 200) for im in images])
    hints = torch.from_numpy(np.repeat(edges[:, None], 3, 1) / 255.0).float()  # ControlNet hint form [N,3,H,W]
    assert metrics.contour_f1(hints, images, 1)["f1"] == pytest.approx(1.0)
    shifted = np.roll(edges, 6, axis=2)
    f1 = metrics.contour_f1(shifted, images, 1)
    assert f1["f1"] < 0.4 and f1["tolerance_px"] == 1
    assert metrics.contour_f1(shifted, images, 6)["f1"] == pytest.approx(1.0)  # within the tolerance again


def test_blur_is_matched_by_sharpness():
    images = disc_images()
    assert metrics.sharpness(metrics.blur_images(images, 1.0)) < metrics.sharpness(images)
    assert np.array_equal(metrics.blur_images(images, 0), images)
    assert metrics.matched_blur(images, metrics.blur_images(images, 0.8)) == pytest.approx(0.8, abs=0.11)


def test_fidelity_scores_species_family_and_the_guide():
    class Fixed(torch.nn.Module):  # "predicts" class = image brightness bucket
        num_classes = 4

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # predict() reads the device from a parameter

        def forward(self, x):
            return torch.nn.functional.one_hot((x.mean((1, 2, 3)) * 4).long().clamp(0, 3), 4).float() * 10

    images = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (10, 80, 150, 220)])  # classes 0, 1, 2, 3
    family = np.array([0, 0, 1, 1])
    f = metrics.fidelity(Fixed(), images, np.array([0, 0, 3, 3]), family, "fixed", guide=Fixed())
    assert (f["species"], f["family"], f["scorer"]) == (0.5, 1.0, "fixed") and f["pred"] == [0, 1, 2, 3]
    assert f["guide_species"] == 0.5 and f["p_target"] == pytest.approx(0.5, abs=1e-3)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    from higfa.world.metrics import kid

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    same = kid(a, b, subsets=20, subset_size=100)
    assert abs(same) < 0.02
    near, far = kid(a, b + 0.3, subsets=20, subset_size=100), kid(a, b + 1.0, subsets=20, subset_size=100)
    assert 0.02 < near < far  # monotone in the shift
    assert kid(a, a[:1]) != kid(a, a[:1])  # fewer than 2 rows: nan, not a number that looks like a result
