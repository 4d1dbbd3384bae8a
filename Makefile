# Two commands do everything on a fresh machine:
#   make demo   installs what is needed, exports the trained built-in flux-mini (and latte-tiny for video) and runs them, offline
#   make test   installs what is needed (idempotently) and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# The development machines keep torch 2.13.0 (CPU build) in /opt/wheels; without it pip would
# fetch a multi-GB CUDA build from PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP  := $(VENV)/.setup-stamp
DEMO   ?= demo-out

.PHONY: setup test demo bench parity-gpu train-mini clean

setup: $(STAMP)

$(STAMP): pyproject.toml runtime/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) -e './runtime[tensorrt-rtx]' -e '.[test]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -rs

# Every picture carries a caption. flux-mini is trained (on synthetic creatures): its matches mean something on
# such images; latte-tiny has random weights (the video pipeline only), and its picture says so.
DOG_POINTS := 173,113 155,108 142,92 44,125 135,131 76,134
demo: setup
	$(VENV)/bin/ditf-export --model flux-mini --out $(DEMO)/flux-mini --force
	$(VENV)/bin/ditf extract examples/creatures --model $(DEMO)/flux-mini --out $(DEMO)/features --overwrite
	$(VENV)/bin/ditf match examples/creatures/dog-a.png examples/creatures/dog-b.png --model $(DEMO)/flux-mini \
		--points "$(DOG_POINTS)" --out $(DEMO)/match.png --json $(DEMO)/match.json
	$(VENV)/bin/ditf show examples/creatures/bird-a.png --model $(DEMO)/flux-mini --out $(DEMO)/pca.png
	$(VENV)/bin/ditf-export --model latte-tiny --out $(DEMO)/latte-tiny --force
	$(VENV)/bin/ditf track examples/frames/cat-pan --model $(DEMO)/latte-tiny \
		--points "150,100 200,60 100,150 250,170" --out $(DEMO)/track.png
	@echo "demo outputs in $(DEMO)/: match.png, pca.png, track.png (pictures), match.json, features/"

bench: setup
	$(PY) bench/bench_matcher.py
	$(PY) bench/bench_export_memory.py

# On a GPU machine (no internet needed): one table of parity vs reference.safetensors and seconds per image,
# per precision and backend, beside PyTorch eager (bench/parity_gpu.py; docs/tensorrt.md). Without a GPU it
# does everything up to the device (exports, TensorRT-RTX builds) and says so per row. The GPU tests:
# `.venv/bin/python -m pytest -m "gpu or tensorrt"`.
parity-gpu: setup
	$(PY) bench/parity_gpu.py $(PARITY_GPU_ARGS)

# Train flux-mini again (about an hour on 2 cores) and ship it: exporter/builtin/flux-mini/ (training.json
# records the seed, steps, loss curves and wall time).
train-mini: setup
	$(PY) -m ditf_export.train_mini --out exporter/builtin/flux-mini

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
