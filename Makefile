# weft: the commands a newcomer needs. See README.md.
CARGO ?= cargo

.PHONY: build demo test lint bench fuzz image image-check

build:
	$(CARGO) build --workspace --bins

## demo: run a small mesh on loopback addresses and show what it does (no cluster, no root)
demo: build
	./target/debug/weft demo

## test: unit tests and end-to-end tests against the real binaries. Tests that need root
## (network namespaces, iptables) skip loudly without it; WEFT_REQUIRE_ROOT_TESTS=1 makes a
## skip a failure, as in CI.
test: build
	$(CARGO) test --workspace

## lint: formatting and clippy with warnings as errors
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: weft against a direct connection and HAProxy, in one run (release build; installs
## haproxy, wrk and valgrind with apt when missing). Results: bench/results/<date>-<commit>.md.
## Not part of `make test`.
bench:
	@command -v haproxy >/dev/null && command -v wrk >/dev/null && command -v valgrind >/dev/null \
	  || { apt-get install -y -qq haproxy wrk valgrind >/dev/null 2>&1 \
	       || { apt-get update -qq && apt-get install -y -qq haproxy wrk valgrind; }; }
	$(CARGO) build --release --workspace --bins
	ulimit -n $$(ulimit -Hn) && ./target/release/weft-bench $(BENCH_ARGS)
	$(CARGO) bench -p weft-proxy --bench decisions -- --warm-up-time 1 --measurement-time 3

## fuzz: every fuzz target under AFL++ for FUZZ_SECONDS each (60 by default; cargo-afl,
## which runs on the stable toolchain: `cargo install cargo-afl --locked`). A crash lands in
## fuzz/regressions/, which `make test` replays. Not part of `make test`.
FUZZ_SECONDS ?= 60
fuzz:
	./fuzz/run $(FUZZ_SECONDS) $(FUZZ_TARGETS)

## image: the container image (Containerfile) with both binaries, built by podman with no
## registry access from statically linked binaries (IMAGE_PROFILE: release, or image-check
## for the quickest build) and this machine's iptables-nft (image/stage). Needs podman and runc.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE ?= localhost/weft:$(VERSION)
IMAGE_PROFILE ?= release
IMAGE_BIN := target/image/x86_64-unknown-linux-gnu/$(if $(filter dev,$(IMAGE_PROFILE)),debug,$(IMAGE_PROFILE))
image:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile $(IMAGE_PROFILE) \
	  --target x86_64-unknown-linux-gnu --target-dir target/image -p weft-proxy -p weft-control --bins
	image/stage $(IMAGE_BIN) target/image/context
	podman build --runtime runc --network none -f Containerfile -t $(IMAGE) target/image/context

## image-check: run the image as a cluster would: both binaries' --version, and
## `weft-proxy init` as the injected init container runs it (root with NET_ADMIN and NET_RAW
## only, a read-only root filesystem), programming the container's own network namespace.
## These machines need runc and lower rlimits than podman asks for by default.
PODMAN_RUN = podman run --runtime runc --network none --rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
image-check:
	$(PODMAN_RUN) $(IMAGE) /usr/local/bin/weft-proxy --version
	$(PODMAN_RUN) $(IMAGE) /usr/local/bin/weft --version
	$(PODMAN_RUN) --read-only --user 0:0 --cap-drop all --cap-add NET_ADMIN,NET_RAW $(IMAGE) \
	  /usr/local/bin/weft-proxy init --ipv6
	$(PODMAN_RUN) --read-only --cap-drop all $(IMAGE) /usr/local/bin/weft install >/dev/null
