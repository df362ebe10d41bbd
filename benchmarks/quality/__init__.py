"""The quality bench, `python -m benchmarks.quality` (`make bench-quality`; what it measures: `run`'s docstring or
--help). Modules: `arms` (the arms and their cache keys), `guides` (the guides they use, trained or tuned ones
included), `run` (generation and the command), `score` (verdicts on the images), `downstream` (few-shot
classifiers trained with the images), `report` (docs/quality.md)."""
