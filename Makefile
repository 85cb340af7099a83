# The two commands of the README. Each does all set-up itself (tools/setup.sh is idempotent and
# caches libtorch outside the clone in $SFTOK_CACHE, default ~/.cache/sftok).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test setup build clean-demo

setup:
	@bash tools/setup.sh

build: setup
	$(CARGO) build --workspace --bins

## make demo: fake ImageNet → … on CPU; prints where its outputs are.
demo: build
	@bash tools/demo.sh

## make test: every unit, parity and end-to-end test.
test: setup
	$(CARGO) test --workspace --no-fail-fast

clean-demo:
	rm -rf demo-out
