# The virtual environment lives outside the clone, keyed by a hash of pyproject.toml, so that every
# fresh clone (CI makes one per run) reuses it instead of installing torch (5.5 GB) again.
PYTHON ?= python3
CACHE ?= $(HOME)/.cache/vggnet
VENV ?= $(CACHE)/venv-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two clones running make at once must not install into the shared venv together: every change to it holds
# this lock (flock, from util-linux; without it, as on macOS, make goes on unlocked).
LOCK := $(shell command -v flock >/dev/null 2>&1 && echo flock $(CACHE)/venv.lock)

.PHONY: demo test test-fast docs lint venv clean-venv paper-check

# The main job: train net A on the embedded MNIST digits (the mnist preset of `vgg train`), then print the
# paper-style table of the four test protocols for the run.
demo: venv
	@run=runs/demo-$$(date +%Y%m%d-%H%M%S); \
	$(VENV)/bin/vgg train --out $$run && \
	$(VENV)/bin/vgg eval $$run --protocol center,dense,multicrop,dense+multicrop --scales single

# every test (CI runs this one)
test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the inner loop: all but the tests marked slow (torchrun, multiprocessing, subprocess runs of the CLI and
# benchmarks, full-size nets)
test-fast: venv
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The manual and the API reference (mkdocs.yml) into site/; --strict fails on a broken link, a reference that
# does not resolve or a docstring that does not parse (not --quiet: it hides the warnings, and strict then passes).
docs: venv
	$(VENV)/bin/mkdocs build --strict

# The formatter and the linter ([tool.ruff] in pyproject.toml): `ruff format .` and `ruff check --fix .` repair
# what they can.
lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# The paper's scale on the CPU: every stage of recipes/imagenet/ at full width from real-size JPEGs through
# `vgg train`, a few steps each; the learning rows (net A, then D from A) run on CUDA, or with --learn
# (PAPER_CHECK_ARGS=--learn): on 2 CPU cores they take longer than the check's budget (docs/paper-check.md).
paper-check: venv
	$(PY) benchmarks/paper_check.py $(PAPER_CHECK_ARGS)

# Full dependencies once per venv (its name holds the hash of pyproject.toml: a changed file makes a new
# one); the project itself (editable, no deps) on every call,
# so the `vgg` script and `import vggnet` always point at this clone. `.venv` in the clone links to the
# shared venv, so that `source .venv/bin/activate` puts `vgg` on the PATH as in any Python project.
venv: $(STAMP)
	$(LOCK) $(PY) -m pip install -q --no-deps --no-build-isolation -e .
	ln -sfn $(VENV) .venv

$(STAMP):
	mkdir -p $(CACHE)
	$(LOCK) sh -c 'test -f $(STAMP) || { \
	  { test -x $(PY) || $(PYTHON) -m venv $(VENV); } && \
	  $(PY) -m pip install -q --upgrade pip "setuptools>=64" wheel && \
	  $(PY) -m pip install -q -e ".[dev]" && \
	  touch $(STAMP); }'

clean-venv:
	rm -rf $(VENV) .venv
