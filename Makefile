# Entry points for building, demonstrating and testing openshell-sandbox and its image.
# `make help` lists them. Everything that needs root (podman, apt) expects to run as root.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# The test stages share podman, the network range and build/; they must run one at a time.
.NOTPARALLEL:

MUSL_TARGET := x86_64-unknown-linux-musl
MUSL_BIN := target/$(MUSL_TARGET)/release
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n1)
SOURCE := $(shell sed -n 's/^repository = "\(.*\)"$$/\1/p' Cargo.toml | head -n1)
# The commit the image is built from; "-dirty" when the work tree differs from it.
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty)
# Always a version tag (never only :latest): what the pod manifests pin.
IMAGE := localhost/openshell-supervisor:$(VERSION)
PYTHON := build/venv/bin/python
SANDBOX_DEBUG := target/debug/openshell-sandbox

# CI sets it to 1 so that tests needing a kernel feature fail instead of skipping.
export OPENSHELL_REQUIRE_KERNEL

.PHONY: help setup setup-test check-host binaries image agent-image demo test test-unit \
	test-manifests test-policies test-fuzz test-e2e test-kernels clean clean-images

help:
	@echo 'make setup       install podman, runc, the musl target and the validation venv (root; idempotent)'
	@echo '                 (make setup-test: also the pinned agent CLIs the agent suite runs)'
	@echo 'make image       build the static binaries and $(IMAGE)'
	@echo 'make demo        setup + image + agent image, then play the pod with podman and show'
	@echo '                 an allowed request, a denied one and the supervisor'"'"'s deny log line'
	@echo 'make test        cargo test --workspace, offline manifest and policy checks, podman end-to-end'
	@echo '                 (stages: test-unit, test-manifests, test-policies, test-fuzz, test-e2e,'
	@echo '                 test-kernels)'
	@echo 'make clean       remove build/ (not target/); make clean-images removes the images'

setup:
	scripts/setup-host.sh

# What the tests need beyond `make setup`: the pinned agent CLIs the agent suite runs.
setup-test:
	scripts/setup-host.sh --agents

# What `make test` needs from scripts/setup-host.sh, checked up front with the fix named.
check-host:
	@[[ $$(id -u) -eq 0 ]] || { echo 'make: run as root (rootful podman)' >&2; exit 1; }
	@command -v podman >/dev/null || { echo 'make: podman missing; run: make setup' >&2; exit 1; }
	@[[ -x $(PYTHON) ]] || { echo 'make: $(PYTHON) missing; run: make setup' >&2; exit 1; }
	@rustup target list --installed | grep -qx $(MUSL_TARGET) \
		|| { echo 'make: Rust target $(MUSL_TARGET) missing; run: make setup' >&2; exit 1; }

# ring (TLS for L7 inspection) compiles C and assembly: with musl-gcc for the static target.
binaries:
	CC_x86_64_unknown_linux_musl=musl-gcc \
		cargo build --release --target $(MUSL_TARGET) -p openshell-sandbox -p openshell-copier

image: binaries
	scripts/build-image.sh $(MUSL_BIN) $(IMAGE) $(VERSION) $(REVISION) $(SOURCE)

agent-image:
	scripts/build-agent-image.sh

demo: setup image
	scripts/demo.sh $(IMAGE) "$$(scripts/build-agent-image.sh)"

# Every stage runs even when an earlier one fails, so one run shows every failure; the
# target fails at the end, naming the stages that did.
TEST_STAGES := test-unit test-manifests test-policies test-fuzz test-e2e test-kernels
# From a fresh machine: the idempotent host setup first (about a second once done).
test: setup-test
	@failed=(); \
	for stage in $(TEST_STAGES); do \
		echo "== make $$stage"; \
		$(MAKE) --no-print-directory $$stage || failed+=("$$stage"); \
	done; \
	if [[ $${#failed[@]} -gt 0 ]]; then \
		echo "make test: FAILED stages: $${failed[*]}" >&2; exit 1; \
	fi; \
	echo "make test: every stage passed ($(TEST_STAGES))"

# cargo build first: the tests crate runs the built binaries (target/debug/openshell-*),
# which `cargo test` alone does not build for another package in a fresh tree.
# --no-fail-fast: every test binary runs, so one run reports every failing test.
test-unit:
	cargo build --workspace
	cargo test --workspace --no-fail-fast

$(SANDBOX_DEBUG): FORCE
	cargo build -p openshell-sandbox

test-manifests: $(SANDBOX_DEBUG)
	$(PYTHON) tests/manifests/validate.py --sandbox $(SANDBOX_DEBUG)

test-policies: $(SANDBOX_DEBUG)
	tests/e2e/check-policies.sh $(SANDBOX_DEBUG)

# Every fuzz target (policy loader, proxy and L7 request heads, DNS wire format, copier
# manifest) from the seeds in fuzz/seeds, two at a time for 60 s in all; any crash fails.
# Build included, under 3 minutes on 2 idle cores.
test-fuzz:
	scripts/fuzz.sh

test-e2e: check-host image
	tests/e2e/pod.sh $(IMAGE) "$$(scripts/build-agent-image.sh)"

# The kernel matrix: Debian 12's 6.1 kernel under QEMU, as shipped (Landlock ABI 2) and
# without Landlock, running the escape, behaviour and view suites (tests/kernels/).
test-kernels: binaries
	tests/kernels/matrix.sh $(MUSL_BIN)/openshell-sandbox

clean:
	rm -rf build

clean-images:
	podman rmi --ignore $(IMAGE) $$(podman images --format '{{.Repository}}:{{.Tag}}' \
		--filter reference='localhost/openshell-e2e-agent')

.PHONY: FORCE
FORCE:
