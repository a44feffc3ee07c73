# dynacore developer entry points. `make run` and `make test` work on a fresh clone of a fresh
# machine: each makes its own virtual environment and builds what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CARGO_MANIFEST := native/Cargo.toml
export DYNACORE_REQUIRE_BACKENDS ?= rust,cython,python

.PHONY: venv build run test lint rust-check pytest wheel-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

# One build: the Rust extension and the Cython twins, in place (editable).
build: venv
	$(PIP) install -q -e '.[dev]'

run: build
	$(PY) -m dynacore demo

lint: build
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy

rust-check:
	cargo fmt --manifest-path $(CARGO_MANIFEST) -- --check
	cargo clippy --manifest-path $(CARGO_MANIFEST) --all-targets --features python -- -D warnings
	cargo test --manifest-path $(CARGO_MANIFEST) -q

pytest: build
	$(PY) -m pytest -q tests

# The wheel, installed into a fresh venv, passes the suite without the source tree on the path.
wheel-test: build
	rm -rf dist build/wheel-venv
	$(PIP) wheel . -w dist --no-deps -q
	$(PYTHON) -m venv build/wheel-venv
	build/wheel-venv/bin/pip install -q "$$(ls dist/dynacore-*.whl)[test]"
	cd build && wheel-venv/bin/python -c "import dynacore, sys; assert 'site-packages' in dynacore.__file__, dynacore.__file__; print('wheel backend:', dynacore.backend)"
	DYNACORE_EXPECT_INSTALLED=1 build/wheel-venv/bin/python -m pytest -q -p no:cacheprovider --rootdir=. tests -m "not slow"

test: lint rust-check pytest wheel-test

# Every benchmark on every backend beside its outside baselines, then one table of ratios.
bench: build
	mkdir -p build
	$(PY) -m pytest benches -q --benchmark-columns=median,ops \
		--benchmark-sort=name --benchmark-json=build/bench.json $(BENCH_ARGS)
	$(PY) benches/report.py build/bench.json

clean:
	rm -rf $(VENV) build dist native/target python/dynacore/*.so python/dynacore/_cy/*.so
