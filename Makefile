# newt's everyday commands. `make run` starts a server with the examples deployed;
# `make test` runs the whole suite (what CI runs, after `make lint`). Both start with
# scripts/setup.sh: it adds the wasm32-wasip1 target if missing and says at once when
# debootstrap or the Docker engine is missing (python functions then answer 503).

CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
GUESTS := -p dice -p hello -p fs-probe
WASM := $(TARGET_DIR)/wasm32-wasip1/release
LISTEN ?= 127.0.0.1:7878

.PHONY: setup run test lint bench bench-report guests fuzz faults schemathesis

# Ready the machine: the wasm32-wasip1 target, and warnings for what python needs.
setup:
	@scripts/setup.sh

# The Rust guests (examples and test guests), built for wasm32-wasip1.
guests: setup
	$(CARGO) build --release --target wasm32-wasip1 $(GUESTS)

# Build newt (release) and serve on $(LISTEN) with the examples deployed.
run: setup guests
	$(CARGO) build --release -p newt-host
	$(TARGET_DIR)/release/newt serve --listen $(LISTEN) \
		--deploy dice=$(WASM)/dice.wasm --deploy hello=$(WASM)/hello.wasm

# Unit tests and end-to-end tests against the real binary.
test: setup guests
	PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s runtimes/python -p 'test_*.py'
	$(CARGO) build -p newt-host
	$(CARGO) test --workspace
	$(MAKE) schemathesis

# The HTTP API fuzzed from its own OpenAPI document (GET /v1/openapi.json) by
# schemathesis against a live server: no 5xx, and every status, content type and body
# as documented. Installs schemathesis into ~/.cache/newt/venv on first use.
schemathesis:
	$(CARGO) build -p newt-host
	CARGO_TARGET_DIR=$(TARGET_DIR) scripts/schemathesis.sh

# The fault and load scenarios at full length (RELIABILITY.md); `make test` runs the
# short version of each. Two need root (they stop dockerd, mount a tmpfs).
faults: setup guests
	$(CARGO) build -p newt-host
	NEWT_FAULTS=full $(CARGO) test -p newt-tests --test faults -- --nocapture --test-threads=1

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p newt-runtime --features fuzzing -- -D warnings

# Every fuzz target for SECONDS each (libFuzzer + AddressSanitizer, stable Rust with
# RUSTC_BOOTSTRAP=1); one target: scripts/fuzz.sh TARGET SECONDS.
SECONDS ?= 30
fuzz:
	scripts/fuzz.sh all $(SECONDS)

# Criterion: in-process wasm calls per start kind, and HTTP throughput.
bench: guests
	$(CARGO) bench -p newt-runtime -p newt-host

# BENCHMARKS.md's newest run: newt's start kinds against its peers on equal work, the
# figures derived from them, and 10 000 wasm functions on one server (--density),
# added as a section with date and commit at the top of its runs. Long: run it on a
# quiet machine.
bench-report: guests
	$(CARGO) build --release -p newt-host
	$(TARGET_DIR)/release/newt bench --self-host --density --json bench.json --chart bench.svg \
		--commit "$$(git rev-parse --short HEAD)$$(git diff --quiet HEAD || echo ' (uncommitted changes)')" \
		--splice-into BENCHMARKS.md
