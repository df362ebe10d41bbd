"""The speed bench, `python -m benchmarks.speed` (`make bench`, `make bench-gpu`): `run` runs the parts (`parts`:
tiny, sd15, torchrun, world_decoder, gpu; each its own module) and `report` folds their outputs into
benchmarks/results/speed.json and docs/speed.md."""
