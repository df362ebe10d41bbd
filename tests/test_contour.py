import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from higfa.contour import ContourTransform, EdgeDetector, extract_edges, to_rgb_float


def bird(h=64, w=80, dtype=np.uint8):
    img = np.zeros((h, w, 3), np.uint8)
    cv2.ellipse(img, (w // 2, h // 2), (w // 4, h // 5), 10, 0, 360, (200, 180, 40), -1)
    cv2.circle(img, (w // 2 + w // 5, h // 2 - h // 6), h // 8, (90, 200, 220), -1)
    return img if dtype == np.uint8 else img.astype(dtype) / 255.0


def test_canny_finds_the_outline_and_is_binary():
    e = extract_edges(bird())
    assert e.shape == (64, 80, 3) and e.dtype == np.uint8
    assert set(np.unique(e)) == {0, 255} and (e > 0).mean() > 0.01
    assert np.array_equal(e[..., 0], e[..., 2])  # gray edges replicated on 3 channels


def test_soft_edges_auto_thresholds_and_blur():
    soft = EdgeDetector("soft")(bird(dtype=np.float32))
    assert soft.dtype == np.float32 and 0 <= soft.min() and soft.max() <= 1 and len(np.unique(soft)) > 2
    auto = EdgeDetector(auto=True, blur=1.0)(bird())
    assert (auto > 0).any()


def test_edge_detector_errors_name_the_input():
    with pytest.raises(ValueError, match="low threshold"):
        EdgeDetector(low=200, high=100)
    with pytest.raises(ValueError, match="edge method"):
        EdgeDetector("sobel")
    with pytest.raises(ValueError, match="image is empty"):
        extract_edges(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="5 channels"):
        extract_edges(np.zeros((4, 4, 5), np.uint8))


def test_alpha_and_gray_are_converted_not_refused():
    rgba = np.dstack([bird(), np.full((64, 80), 255, np.uint8)])
    assert np.array_equal(extract_edges(rgba), extract_edges(bird()))
    gray = cv2.cvtColor(bird(), cv2.COLOR_RGB2GRAY)
    assert extract_edges(gray).shape == (64, 80, 3) and extract_edges(gray[..., None]).shape == (64, 80, 3)
    assert to_rgb_float(rgba[..., :1]).shape == (64, 80, 3)


def test_transform_is_deterministic_per_seed_and_keeps_shape_dtype():
    e = extract_edges(bird())
    t = ContourTransform(amount=0.8)
    a, b, c = t(e, seed=3), t(e, seed=3), t(e, seed=4)
    assert a.shape == e.shape and a.dtype == e.dtype
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0, 255}  # binary edges stay binary


def test_amount_zero_is_the_identity():
    e_u8 = extract_edges(bird())
    e_f32 = EdgeDetector("soft")(bird(dtype=np.float32))
    t = ContourTransform(amount=0.0)
    assert np.array_equal(t(e_u8, seed=1), e_u8)
    assert np.array_equal(t(e_f32, seed=1), e_f32)
    batch = torch.from_numpy(np.stack([e_f32, e_f32[::-1].copy()]))
    assert torch.equal(t(batch, seed=9), batch)


def test_torch_batches_variants_and_per_image_seeds():
    imgs = torch.from_numpy(np.stack([bird(dtype=np.float32), bird(dtype=np.float32)[:, ::-1].copy()]))
    edges = EdgeDetector()(imgs)
    assert edges.shape == (2, 64, 80, 3) and edges.dtype == torch.float32
    out = ContourTransform(amount=1.0)(edges, seed=0, variants=3)
    assert out.shape == (6, 64, 80, 3)
    assert not torch.equal(out[0], out[1])  # variants differ
    # image 1's variants are the same whatever batch it arrives in
    alone = ContourTransform(amount=1.0)(edges[1:], seed=0, variants=3)
    assert not torch.equal(alone, out[3:])  # index is part of the seed: (seed, i, v)
    assert torch.equal(ContourTransform(amount=1.0)(edges, seed=0, variants=3), out)


@pytest.mark.parametrize("kind", ["elastic", "tps", "none"])
def test_each_warp_kind_runs_and_moves_edges(kind):
    e = extract_edges(bird()).astype(np.float32) / 255
    t = ContourTransform(amount=1.0, rotation=0, scale=0, translate=0, shear=0, flip=0, erase_patches=0,
                         thickness=0, warp=0.08, warp_kind=kind)
    out = t(e, seed=11)
    assert out.shape == e.shape
    assert np.array_equal(out, e) == (kind == "none")


def test_each_knob_changes_the_output_alone():
    e = extract_edges(bird())
    zero = dict(rotation=0, scale=0, translate=0, shear=0, flip=0, warp=0, erase_patches=0, thickness=0)
    for knob, value in [("rotation", 30), ("scale", 0.3), ("translate", 0.2), ("shear", 20), ("flip", 1.0),
                        ("warp", 0.1), ("erase_patches", 6), ("thickness", 2)]:
        t = ContourTransform(amount=1.0, **{**zero, knob: value})
        changed = any(not np.array_equal(t(e, seed=s), e) for s in range(4))
        assert changed, knob


def test_same_draw_applies_to_the_source_image():
    src = bird().astype(np.float32) / 255
    t = ContourTransform(amount=1.0, erase_patches=0, thickness=0)
    draw = t.sample(64, 80, seed=(5, 0, 0))
    warped_src = draw.geometry(src)
    assert warped_src.shape == src.shape and not np.array_equal(warped_src, src)
    # the contour of the warped source lines up with the warped contour
    e = extract_edges(bird()).astype(np.float32) / 255
    warped_edges = draw.contour(e)
    near = cv2.dilate(warped_edges[..., 0], np.ones((5, 5), np.uint8))
    edges_of_warped = extract_edges((warped_src * 255).astype(np.uint8))[..., 0] > 0
    assert near[edges_of_warped].mean() > 0.8


def test_bad_transform_ranges():
    with pytest.raises(ValueError, match="amount"):
        ContourTransform(amount=1.5)
    with pytest.raises(ValueError, match="rotation"):
        ContourTransform(rotation=-1)
    with pytest.raises(ValueError, match="warp_kind"):
        ContourTransform(warp_kind="swirl")


@settings(max_examples=25, deadline=None)
@given(amount=st.floats(0, 1), seed=st.integers(0, 2**40), h=st.integers(8, 48), w=st.integers(8, 48),
       floaty=st.booleans())
def test_any_amount_and_size_keeps_shape_dtype_range(amount, seed, h, w, floaty):
    rng = np.random.default_rng(seed % 1000)
    e = (rng.random((h, w, 3)) > 0.8).astype(np.float32)
    e = e if floaty else (e * 255).astype(np.uint8)
    out = ContourTransform(amount=amount)(e, seed=seed)
    assert out.shape == e.shape and out.dtype == e.dtype
    assert out.min() >= 0 and out.max() <= (1 if floaty else 255)
