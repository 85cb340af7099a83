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

# The test binaries that read ../shared/fixtures. They take every seed, shape and count from the
# fixtures' sidecars, and find the fixtures through SFTOK_FIXTURES when it is set.
FIXTURE_TESTS := --test sftok_parity --test vqgan_parity --test eval_metrics --test fid_inception \
	--test sftok_checkpoint --test eval_fid --test recon --test lpips_parity --test dino_disc_parity \
	--test stage3_step_parity --test stage3_handoff --test maskgit_generator_parity

## make test: every unit, parity and end-to-end test; then the fixture tests again on a copy of the
## fixtures in a temporary directory (SFTOK_FIXTURES), so that no test depends on where they lie,
## and, on a CPU with AVX-512, with every float32 CPU matmul through oneDNN (SFTOK_CPU_MATMUL=onednn;
## `auto` in the first run sends only products of at least 2^21 multiply-adds there, and most of the
## tiny fixtures' products are smaller).
## (--workspace in the rerun: the same feature resolution as the first run, so nothing is rebuilt.)
## Last, `cargo check` of the GPU machine's build (tools/gpu-build.sh; the torch 2.11 wheel is cached
## in $SFTOK_CACHE like libtorch).
test: setup
	$(CARGO) test --workspace --no-fail-fast
	@fx=$$(mktemp -d) && trap 'rm -rf "$$fx"' EXIT && cp -R ../shared/fixtures/. "$$fx"/ && \
	mm=$$(grep -q avx512bw /proc/cpuinfo 2>/dev/null && echo onednn || echo auto) && \
	echo "fixture tests again with SFTOK_FIXTURES=$$fx (a copy of ../shared/fixtures), SFTOK_CPU_MATMUL=$$mm" && \
	SFTOK_FIXTURES="$$fx" SFTOK_CPU_MATMUL=$$mm $(CARGO) test --workspace --no-fail-fast $(FIXTURE_TESTS)
	@echo "the GPU machine's build (tch 0.24, libtorch 2.11, NCCL) still compiles: tools/gpu-build.sh --check"
	@bash tools/gpu-build.sh --check

clean-demo:
	rm -rf demo-out
