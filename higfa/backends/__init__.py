"""Backends: real diffusion models behind the core's `Denoiser` protocol.

`denoiser` wraps a diffusers UNet (+ ControlNet) and VAE so the core's `Guide` drives them inside any
diffusers scheduler; `components` loads those parts from local diffusers folders or single-file
checkpoints (nothing is downloaded); `ldm_export` writes diffusers models back as one original-layout
checkpoint. ComfyUI is the other backend: it lives in the top-level `nodes/` package, never here.
"""
