"""Test doubles: tiny random-init models in the real formats (diffusers UNet, ControlNet, VAE, CLIP, timm
classifier), for tests and benchmarks that must run without downloaded weights. `stand_ins` builds the
modules; `pipeline_folder` saves them as a diffusers folder that the real loaders read. Never used by a
user-facing path.
"""
