# Cedana — build, set up, test, benchmark.
#
#   make demo    install what is missing (CRIU included), build, checkpoint and restore a sample process
#   make test    install what is missing, build, vet, and run the whole test suite (real CRIU, as root)
#   make build   build bin/cedana
#   make setup   provision system dependencies (idempotent)
#   make bench   benchmark cedana against raw criu, docker/runc, and the daemon (see docs/benchmarks.md)
#   make fuzz    run every fuzz target for FUZZTIME each

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/cedana/cedana/internal/checkpoint.Version=$(VERSION)
BIN      := bin/cedana
FUZZTIME ?= 10s
# Short fuzz runs in `make test`; the seed corpora always run as unit tests.
TEST_FUZZTIME ?= 5s

.PHONY: all build setup test unit fuzz demo bench vet clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/cedana

setup:
	bash scripts/setup.sh

vet:
	$(GO) vet ./...

unit:
	$(GO) test -count=1 ./internal/...

# scripts/test.sh: go test -json ./..., short fuzz runs, then the list of
# skipped tests with their reasons; fails if anything failed.
test: setup build vet
	@GO=$(GO) CEDANA_BIN=$(CURDIR)/$(BIN) TEST_FUZZTIME=$(TEST_FUZZTIME) bash scripts/test.sh

fuzz:
	@GO=$(GO) FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

demo: setup build
	bash scripts/demo.sh

bench: setup build
	bash scripts/bench.sh
	bash scripts/bench-containers.sh
	bash scripts/bench-daemon.sh

clean:
	rm -rf bin
