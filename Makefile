# Periphery: the two commands a new user runs are `make run` and `make test`.
# Each installs what it needs (scripts/setup.sh) before it builds.

CARGO ?= cargo
FUZZ_SECONDS ?= 60
# cargo-fuzz needs nightly features; use the nightly toolchain when it is installed,
# otherwise let the stable compiler accept them.
FUZZ_TOOLCHAIN := $(shell rustup toolchain list 2>/dev/null | grep -q '^nightly' && echo +nightly)
FUZZ_ENV := $(if $(FUZZ_TOOLCHAIN),,RUSTC_BOOTSTRAP=1)

.PHONY: run test bench bench-stream bench-render setup build lint fuzz clean

## Build and start the appliance with a paired local tablet; Ctrl-C stops it.
run: setup build
	./scripts/run.sh

## Everything the project checks (what CI runs).
test: setup lint build
	$(CARGO) test --workspace
	@echo "make test: all checks passed"

setup:
	./scripts/setup.sh

build:
	$(CARGO) build --workspace --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Benchmarks: each prints a ratio against a baseline measured in the same run.
bench: setup
	$(CARGO) bench --workspace --exclude periphery-e2e

## The streaming benchmark: a daemon, a 1080p workstation with moving content, 1 and 3 tablets.
bench-stream: setup
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p periphery-e2e --bench stream
	$(CARGO) bench -p periphery-e2e --bench handoff

## The render farm benchmark: N local nodes against `xargs -P N`, and 10,000 no-op tasks.
bench-render: setup
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p periphery-e2e --bench render

## Fuzz the network decoders for FUZZ_SECONDS (not part of `make test`).
fuzz:
	./scripts/setup.sh fuzz
	cd fuzz && for t in control_stream media_streams; do \
		$(FUZZ_ENV) $(CARGO) $(FUZZ_TOOLCHAIN) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
	rm -rf .periphery-run
