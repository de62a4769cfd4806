# netready. `sudo make demo` shows the problem and its fix; `sudo make test` runs every test.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
FUZZTIME ?= 30s

.PHONY: all build test unit demo fuzz vet clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/netready ./plugin/netready

# Root-only tests skip with a reason when not run as root.
test: build vet
	$(GO) test -count=1 -timeout 20m ./...

# The tests that need neither root nor network namespaces.
unit:
	$(GO) test -count=1 ./pkg/config/ ./pkg/gate/

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

demo:
	$(GO) run ./e2e/demo

fuzz:
	$(GO) test ./pkg/config/ -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/config/ -run '^$$' -fuzz '^FuzzParseProbe$$' -fuzztime $(FUZZTIME)

clean:
	rm -rf bin dist
