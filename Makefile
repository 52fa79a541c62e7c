# weft: the commands a newcomer needs. See README.md.
CARGO ?= cargo

.PHONY: build demo test lint bench fuzz

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
