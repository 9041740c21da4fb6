# gpuslice: build and test.
#
#   make            release build of every binary and library
#   make packages   the .deb and .rpm (target/debian, target/generate-rpm) from one release build
#   make test       every test tier that can run on this machine (see README "Testing")
#   make cudart     NVIDIA's CUDA runtime, CuPy and PyTorch on the simulated GPU, with and without the shim
#   make check      formatting, clippy with warnings as errors, then `make test` (what CI runs)
#   make bench      overhead as ratios against a baseline of the same run: the interception
#                   library against the bare driver, container start-up with a slice against
#                   without, a pass of the host guard with 64 slices against one with no process
#   make demo       without a GPU: a simulated two-GPU node, real containers on a slice (root;
#                   installs what it lacks, as `make test` does; DEMO_ARGS="--engine podman",
#                   "--keep DIR": scripts/demo.sh --help)

CARGO ?= cargo
SHELL := /bin/bash

# As root (how CI runs), every test of every tier but the GPU tier must run: a test that would
# print `skipped: …` fails instead (tests/support, tests/e2e/lib.sh, tests/packages/run.sh).
# Set GPUSLICE_NO_SKIP=0 to allow skips as root.
ifeq ($(shell id -u),0)
export GPUSLICE_NO_SKIP ?= 1
endif

# The hook runs as root at every container start: linked statically (crt-static), so no
# loader variable and no library from anywhere reaches it. Built for an explicit target so
# that the flag applies to it alone, not to build scripts and proc-macros.
HOOK_TARGET := x86_64-unknown-linux-gnu
HOOK := target/$(HOOK_TARGET)/release/gpuslice-hook

.PHONY: all build release hook packages packages-test test unit e2e cudart gpu bench demo check fmt clippy clean grafana

all: release

build:
	$(CARGO) build --workspace --all-targets

release: hook
	$(CARGO) build --release --workspace

hook:
	$(CARGO) rustc --release -p gpuslice-hook --bin gpuslice-hook --target $(HOOK_TARGET) -- -C target-feature=+crt-static

# The .deb (cargo-deb) and .rpm (cargo-generate-rpm) from one release build: stripped copies
# of the binaries go to target/pkg-stage/, which both packages' assets name (cdi-gen/Cargo.toml).
PKG_STAGE := target/pkg-stage
packages: release
	command -v cargo-deb >/dev/null && command -v cargo-generate-rpm >/dev/null || \
		{ echo "make packages: needs cargo-deb and cargo-generate-rpm: run tests/packages/install-deps.sh"; exit 1; }
	rm -rf $(PKG_STAGE) && mkdir -p $(PKG_STAGE)
	strip -s -o $(PKG_STAGE)/gpuslice-cdi target/release/gpuslice-cdi
	strip -s -o $(PKG_STAGE)/gpuslice-hook $(HOOK)
	strip -s -o $(PKG_STAGE)/gpuslice-runtime target/release/gpuslice-runtime
	strip -s -o $(PKG_STAGE)/gpuslice-device-plugin target/release/gpuslice-device-plugin
	strip -s -o $(PKG_STAGE)/libgpuslice.so target/release/libgpuslice.so
	for m in packaging/man/*.8; do gzip -9n -c $$m > $(PKG_STAGE)/$${m##*/}.gz; done
	$(CARGO) deb -p gpuslice-cdi --no-build --no-strip
	$(CARGO) generate-rpm -p cdi-gen

# The packages' checks: lintian, rpmlint, contents, scripts, install and purge in a clean root.
packages-test:
	bash tests/packages/run.sh --install

# Tier 1+2: unit and integration tests (the binaries against the simulated GPU). The shim's
# suite runs twice: on a simulated CUDA 12.8 driver (the default), then on CUDA 13.0.
unit:
	$(CARGO) build --workspace
	$(CARGO) test --workspace --no-fail-fast
	GPUSLICE_TEST_CUDA_VERSION=13000 $(CARGO) test -p gpuslice-shim --no-fail-fast

# Tier 3: real container engines, as root; installs and starts them when missing.
e2e: release
	bash tests/e2e/run.sh --install

# NVIDIA's CUDA runtime (libcudart 12.9 and 13.x from PyPI, pinned in tests/cudart/runtimes.txt)
# running C programs on the simulated GPU: alone, in a slice through the shim, and in a container
# (root and Docker for those; skipped otherwise); and CuPy and PyTorch (tests/cudart/frameworks.txt).
# The wheels are downloaded into /var/cache/gpuslice-cudart (about 9.5 GiB with the environments).
cudart: release
	bash tests/cudart/run.sh --install

# Tier 4: a real NVIDIA GPU (skips itself, saying why, without one).
gpu:
	@if command -v nvidia-smi >/dev/null 2>&1; then $(MAKE) --no-print-directory release; fi
	bash tests/gpu/run.sh

# Overhead of the interception library against the bare driver, container start-up with a
# slice against without (Docker with CDI), and a pass of the host guard with 64 slices against
# one without processes, as ratios (root; each says `skipped: …` otherwise).
bench: release
	$(CARGO) bench -p gpuslice-shim --bench shim
	bash tests/bench/startup.sh
	bash tests/bench/engines.sh
	bash tests/bench/guard.sh
	$(CARGO) bench -p gpuslice-cdi --bench metrics

# The walkthrough on a simulated node (root): Docker or podman runs containers on a 40 GiB
# slice; exits non-zero when a step does not show what it should. Like `make test`, it installs
# what it lacks (tests/e2e/install-deps.sh, Debian 12); DEMO_INSTALL= installs nothing.
DEMO_ARGS ?=
DEMO_INSTALL ?= --install
demo: release
	bash scripts/demo.sh $(DEMO_INSTALL) $(DEMO_ARGS)

# The Grafana dashboard against Grafana's schema types (grafana-foundation-sdk from PyPI).
grafana:
	bash tests/grafana/run.sh

test: unit e2e packages-test cudart gpu grafana

fmt:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path tests/cri-client/Cargo.toml -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check: fmt clippy test

clean:
	$(CARGO) clean
