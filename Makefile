# weft: the commands a newcomer needs. See README.md.
CARGO ?= cargo

.PHONY: build demo test lint bench

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

## bench: NOT BUILT YET. The benchmark suite (weft vs a direct connection vs HAProxy) is
## tracked as its own issue; until it lands this target fails rather than pretend.
bench:
	@echo "make bench: the benchmark suite is not built yet (see the benchmark issue); nothing was measured." >&2
	@exit 1
