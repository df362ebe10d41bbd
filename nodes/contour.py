"""Transformed contours: edges of the input images, warped by a seeded random transform."""

from __future__ import annotations

import comfy.model_management

from ..higfa.contour import EDGE_METHODS, WARP_KINDS, ContourTransform, EdgeDetector
from ._comfy import CATEGORY, CONTOUR_RANGES, check_image_size, io

_R = ContourTransform()  # defaults: the ranges at amount = 1


def _range(name: str, tip: str, hi: float, step: float = 0.01):
    return io.Float.Input(name, default=float(getattr(_R, name)), min=0.0, max=hi, step=step, tooltip=tip)


class HiGFAContourRanges(io.ComfyNode):
    """The advanced set: every range of the transform, each its value at amount = 1."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_ContourRanges",
            display_name="HiGFA Contour Ranges (advanced)",
            category=f"{CATEGORY}/contour",
            description="Per-transform ranges for HiGFA Contour Transform. Each is its value at amount = 1; "
                        "the transform node's amount scales them all.",
            inputs=[
                _range("rotation", "± degrees of rotation about the centre.", 180.0, 0.5),
                _range("scale", "± fraction of zoom (0.15 = 85%..115%).", 0.9),
                _range("translate", "± shift as a fraction of the image size.", 0.5),
                _range("shear", "± degrees of horizontal shear.", 45.0, 0.5),
                _range("flip", "Probability of a horizontal flip.", 1.0),
                _range("warp", "Largest elastic/TPS displacement, as a fraction of the image size.", 0.3, 0.005),
                io.Combo.Input("warp_kind", options=list(WARP_KINDS), default=_R.warp_kind,
                               tooltip="elastic: smooth random field. tps: thin-plate spline through moved "
                                       "grid points. none: no local warp."),
                _range("warp_smoothness", "Elastic smoothing σ (or TPS grid spacing) as a fraction of the size: "
                                          "larger = broader, gentler bends.", 1.0),
                io.Int.Input("erase_patches", default=_R.erase_patches, min=0, max=20,
                             tooltip="Up to this many edge patches are dropped (contour dropout)."),
                _range("erase_size", "Largest dropped patch, as a fraction of the short side.", 1.0),
                io.Int.Input("thickness", default=_R.thickness, min=0, max=10,
                             tooltip="Up to this many pixels of extra edge width."),
            ],
            outputs=[CONTOUR_RANGES.Output(display_name="ranges")],
        )

    @classmethod
    def execute(cls, **ranges) -> io.NodeOutput:
        return io.NodeOutput(ContourTransform(**ranges))


class HiGFAContourTransform(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_ContourTransform",
            display_name="HiGFA Contour Transform",
            category=f"{CATEGORY}/contour",
            description="Edges of each image (white on black), then a seeded random affine + warp + edge dropout. "
                        "Feed the result to a ControlNet (Canny or soft-edge) as the contour.",
            inputs=[
                io.Image.Input("image", tooltip="Source images (a batch). Alpha is composited over black."),
                io.Combo.Input("detector", options=[*EDGE_METHODS, "none"], default="canny",
                               tooltip="canny: binary edges (Canny ControlNets). soft: gradient magnitude "
                                       "(soft-edge ControlNets). none: the input already is an edge map."),
                io.Float.Input("low_threshold", default=120.0, min=0.0, max=255.0, step=1.0,
                               tooltip="Canny low threshold (SaSPA: 120)."),
                io.Float.Input("high_threshold", default=200.0, min=0.0, max=255.0, step=1.0,
                               tooltip="Canny high threshold (SaSPA: 200)."),
                io.Float.Input("blur", default=0.0, min=0.0, max=10.0, step=0.1,
                               tooltip="Gaussian blur σ in pixels before edge detection; removes texture edges."),
                io.Boolean.Input("auto_thresholds", default=False,
                                 tooltip="Canny thresholds from the image median ((1 ± 0.33)·median); "
                                         "overrides low/high."),
                io.Float.Input("amount", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="How strongly to transform: scales every range. 0 = edges unchanged."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                             tooltip="Same seed, same transforms. Variant v of image i uses (seed, index + i, v)."),
                io.Int.Input("variants", default=1, min=1, max=64,
                             tooltip="Transformed contours per input image (each image's variants together)."),
                io.Int.Input("index", default=0, min=0, max=0x7FFFFFFF, optional=True,
                             tooltip="Position of the first image in its dataset, so one-image-per-run "
                                     "loops still draw a different transform per image."),
                CONTOUR_RANGES.Input("ranges", optional=True,
                                     tooltip="Per-transform ranges from HiGFA Contour Ranges (default: "
                                             "docs/method.md values)."),
            ],
            outputs=[io.Image.Output(display_name="contour", tooltip="B·variants transformed edge maps."),
                     io.Image.Output(display_name="edges", tooltip="The untransformed edge maps (B images).")],
        )

    @classmethod
    def execute(cls, image, detector, low_threshold, high_threshold, blur, auto_thresholds, amount, seed, variants,
                index=0, ranges=None) -> io.NodeOutput:
        comfy.model_management.throw_exception_if_processing_interrupted()
        # Checked before any work: edges and warps are full-resolution float copies per variant.
        check_image_size(image.shape[1], image.shape[2], "image", count=image.shape[0] * variants)
        if detector == "none":
            edges = image
        else:
            edges = EdgeDetector(detector, low_threshold, high_threshold, blur, auto_thresholds)(image)
        transform = (ranges or ContourTransform()).replace(amount=amount)
        return io.NodeOutput(transform(edges, seed, variants, first_index=index), edges)
