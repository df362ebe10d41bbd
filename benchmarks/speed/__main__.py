"""`python -m benchmarks.speed`: the speed bench (benchmarks/speed/run.py)."""

from .run import main

if __name__ == "__main__":
    raise SystemExit(main())
