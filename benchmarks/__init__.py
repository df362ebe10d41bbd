"""HiGFA's benchmarks, run from the repository root as modules (results in benchmarks/results/*.json, reports in
docs/quality.md and docs/speed.md):

    python -m benchmarks.quality            # make bench-quality: fidelity, diversity, downstream on the world
    python -m benchmarks.speed              # make bench: time and memory (parts: benchmarks/speed/)
    python -m benchmarks.guidance_options   # the sweep that chose the higfa-robust preset
    python -m benchmarks.tune_guide         # the PGD tuning of the shipped robust guide
"""
