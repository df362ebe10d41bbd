"""`python -m benchmarks.quality`: the quality bench (benchmarks/quality/run.py)."""

from .run import main

if __name__ == "__main__":
    raise SystemExit(main())
