"""`higfa augment --guidance-vae`: a TAESD-architecture decoder guides, the trace and run.json say so; without
the flag a run is what it was (same fingerprint, same bytes)."""

from __future__ import annotations

import json

import torch

from augment_support import args_for, assert_same_outputs, run_cli  # the fixtures world, reference: conftest.py


def test_guidance_vae_flag(world, reference, tmp_path):
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                        num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4).save_pretrained(tmp_path / "taesd")
    out = tmp_path / "out"
    rc, err = run_cli(args_for(world, out, "--guidance-vae", str(tmp_path / "taesd")))
    assert rc == 0, err
    traces = [json.loads(p.read_text()) for p in sorted((out / "traces").rglob("*.json"))]
    assert traces and all(t["guidance_decoder"] == "guidance_vae (AutoencoderTiny)" for t in traces)
    fingerprint = json.loads((out / "run.json").read_text())["fingerprint"]
    assert fingerprint["guidance_vae"] == str((tmp_path / "taesd").resolve())

    ref_traces = [json.loads(p.read_text()) for p in sorted((reference[0] / "traces").rglob("*.json"))]
    assert all(t["guidance_decoder"] == "vae (AutoencoderKL)" for t in ref_traces)
    # another decoder on the classifier path: other confidences (the final images use the VAE either way)
    assert [s["confidence"] for t in traces for s in t["steps"]] != [s["confidence"] for t in ref_traces
                                                                       for s in t["steps"]]
    again = tmp_path / "none"
    rc, err = run_cli(args_for(world, again, "--guidance-vae", "none"))
    assert rc == 0, err
    assert_same_outputs(again, reference[0])
    assert "guidance_vae" not in json.loads((again / "run.json").read_text())["fingerprint"]


def test_bad_guidance_vae_is_named(world, tmp_path):
    rc, err = run_cli(args_for(world, tmp_path / "out", "--guidance-vae", str(tmp_path / "missing")))
    assert rc != 0 and "--guidance-vae" in err and "no such file or folder" in err
