# Two commands do everything on a fresh machine:
#   make demo   installs what is needed and exports + runs the built-in flux-tiny and latte-tiny models, offline
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

.PHONY: setup test demo bench parity-gpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml runtime/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) -e './runtime[tensorrt-rtx]' -e '.[test]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -rs

# Every picture carries a caption; the built-in models have random weights, and their pictures say so.
demo: setup
	$(VENV)/bin/ditf-export --model flux-tiny --out $(DEMO)/flux-tiny --force
	$(VENV)/bin/ditf extract examples/images --model $(DEMO)/flux-tiny --out $(DEMO)/features --overwrite
	$(VENV)/bin/ditf match examples/images/cat-a.jpg examples/images/cat-b.jpg --model $(DEMO)/flux-tiny \
		--out $(DEMO)/match.png --json $(DEMO)/match.json
	$(VENV)/bin/ditf show examples/images/cat-a.jpg --model $(DEMO)/flux-tiny --out $(DEMO)/pca.png
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

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
