# newt's everyday commands. `make run` starts a server with the examples deployed;
# `make test` runs the whole suite (what CI runs, after `make lint`).

CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
GUESTS := -p dice -p hello -p fs-probe
WASM := $(TARGET_DIR)/wasm32-wasip1/release
LISTEN ?= 127.0.0.1:7878

.PHONY: run test lint bench bench-report guests

# The Rust guests (examples and test guests), built for wasm32-wasip1.
guests:
	$(CARGO) build --release --target wasm32-wasip1 $(GUESTS)

# Build newt (release) and serve on $(LISTEN) with the examples deployed.
run: guests
	$(CARGO) build --release -p newt-host
	$(TARGET_DIR)/release/newt serve --listen $(LISTEN) \
		--deploy dice=$(WASM)/dice.wasm --deploy hello=$(WASM)/hello.wasm

# Unit tests and end-to-end tests against the real binary.
test: guests
	PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s runtimes/python -p 'test_*.py'
	$(CARGO) build -p newt-host
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Criterion: in-process wasm calls per start kind, and HTTP throughput.
bench: guests
	$(CARGO) bench -p newt-runtime -p newt-host

# The side-by-side table of BENCHMARKS.md: newt's start kinds against its peers.
bench-report:
	$(CARGO) build --release -p newt-host
	$(TARGET_DIR)/release/newt bench --self-host --json bench.json --chart bench.svg
