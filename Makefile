# netready. `sudo make demo` shows the problem and its fix; `sudo make test` runs every test.
GO      ?= go
# A release is the tag v<chart appVersion>; its VERSION drops the "v", so `make image` tags the image
# as deploy/'s manifest and chart pull it by default. Untagged trees get the commit.
VERSION ?= $(shell (git describe --tags --always --dirty 2>/dev/null || echo dev) | sed 's/^v//')
LDFLAGS := -s -w -X main.version=$(VERSION)
FUZZTIME ?= 30s

.PHONY: all build deps test unit demo bench fuzz vet clean dist dist-check e2e e2e-containerd e2e-k3s image image-test deploy-test

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/netready ./plugin/netready

# What the tests and the demo need from Debian (iproute2, nftables, iptables, qemu-user-static),
# installed when run as root and missing; without root it only says what is missing. It runs before
# anything is built, so a bare machine fails (or is fixed) at once, not after minutes of building.
deps:
	@bash scripts/test-deps.sh

# Root-only tests skip with a reason when not run as root. ./... covers the libcni tier (e2e/);
# the containerd tier is a module of its own, which ./... does not enter.
test: deps build vet
	$(GO) test -count=1 -timeout 20m ./...
	$(MAKE) e2e-containerd
	$(MAKE) e2e-k3s
	$(MAKE) dist-check
	$(MAKE) image-test
	$(MAKE) deploy-test

# The end-to-end tiers. E2E_JSON=FILE writes the containerd seed scenario's figures there,
# E2E_K3S_JSON=FILE the K3s tier's.
e2e: build
	$(GO) test -count=1 -timeout 20m ./e2e/...
	$(MAKE) e2e-containerd
	$(MAKE) e2e-k3s

# The tests that need neither root nor network namespaces.
unit:
	$(GO) test -count=1 ./pkg/config/ ./pkg/gate/ ./pkg/install/ ./pkg/podwatch/

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

# Real containerd + runc + crictl (built from the versions pinned in e2e/containerd/go.mod), the
# seed scenario with NETREADY_SEED_N pods each way (default 20). Root only; skips otherwise.
e2e-containerd:
	cd e2e/containerd && $(GO) vet ./... && \
		NETREADY_SEED_JSON=$(if $(E2E_JSON),$(abspath $(E2E_JSON))) $(GO) test -count=1 -v -timeout 30m ./...

# A real K3s node (../shared/k3s, or NETREADY_K3S_DIR, or K3S_BIN) in network namespaces, with
# netready installed in its live chain. Root only; skips otherwise or when there is no K3s.
# E2E_K3S_JSON=FILE writes the figures; E2E_K3S_FLAGS=-short runs fewer pods. See e2e/k3s/README.md.
e2e-k3s:
	cd e2e/k3s && $(GO) vet ./... && \
		E2E_K3S_JSON=$(if $(E2E_K3S_JSON),$(abspath $(E2E_K3S_JSON))) $(GO) test -count=1 -v -timeout 40m ./... $(E2E_K3S_FLAGS)

demo: deps
	$(GO) run ./e2e/demo

# As root, at most 10 minutes: the figures of e2e/bench as a table; BENCH_JSON=FILE also writes
# them as JSON, NETREADY_SEED_JSON=FILE adds the containerd tier's seed figures. BENCH_FLAGS=-quick
# is a smoke test of a few seconds. A slower machine may need BENCH_FLAGS=-budget=20m: when the
# budget runs out, the stages that finished are printed, marked partial, and the run fails.
bench:
	$(GO) run ./e2e/bench $(BENCH_FLAGS)

fuzz:
	$(GO) test ./pkg/config/ -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/config/ -run '^$$' -fuzz '^FuzzParseProbe$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/config/ -run '^$$' -fuzz '^FuzzPod$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/config/ -run '^$$' -fuzz '^FuzzResolveAnnotations$$' -fuzztime $(FUZZTIME)

clean:
	rm -rf bin dist

# Release tarballs dist/netready-$(VERSION)-linux-{amd64,arm64,arm}.tar.gz (arm: GOARM=7, as on a
# Raspberry Pi) and dist/SHA256SUMS. Each holds the static binary (built as `build` does), the
# node bootstrap script, the conflists, LICENSE and INSTALL.md, under netready-$(VERSION)-linux-ARCH/.
# Entries are sorted, owned by 0:0 and dated at the last commit, and gzip stores no name or time,
# so the same tree and Go toolchain give the same bytes.
DIST_ARCHES := amd64 arm64 arm
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

dist:
	rm -rf dist
	set -e; for arch in $(DIST_ARCHES); do \
		name=netready-$(VERSION)-linux-$$arch; stage=dist/stage/$$name; \
		install -d -m 0755 $$stage $$stage/conflist; \
		goarm=; if [ $$arch = arm ]; then goarm=7; fi; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch GOARM=$$goarm \
			$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $$stage/netready ./plugin/netready; \
		install -m 0755 scripts/k3s-node-bootstrap.sh $$stage/; \
		install -m 0644 conflist/*.conflist conflist/README.md $$stage/conflist/; \
		install -m 0644 LICENSE packaging/INSTALL.md $$stage/; \
		tar --sort=name --mtime=@$(SOURCE_DATE_EPOCH) --owner=0 --group=0 --numeric-owner \
			--format=gnu -C dist/stage -cf - $$name | gzip -9n >dist/$$name.tar.gz; \
	done
	rm -rf dist/stage
	cd dist && sha256sum netready-$(VERSION)-linux-*.tar.gz >SHA256SUMS

# The tarballs' binaries run on amd64, arm64 and armv7 (the last two under qemu-user).
dist-check: dist
	bash scripts/dist-check.sh

# Container images without a container engine (packaging/image, go-containerregistry, a module of
# its own): dist/image/netready-image-$(VERSION)-linux-{amd64,arm64,arm}.tar, each the static
# binary alone on an empty base (for `ctr images import` or `docker load`, tagged
# docker.io/netready/netready:$(VERSION)), and dist/image/netready-image-$(VERSION)-oci.tar, an OCI
# layout with the multi-arch index. Dated at the last commit like `make dist`: same bytes again.
image:
	rm -rf dist/image
	set -e; bins=; for arch in $(DIST_ARCHES); do \
		goarm=; if [ $$arch = arm ]; then goarm=7; fi; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch GOARM=$$goarm \
			$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/image/bin/$$arch/netready ./plugin/netready; \
		bins="$$bins -bin $$arch=$(CURDIR)/dist/image/bin/$$arch/netready"; \
	done; \
	cd packaging/image && $(GO) run . -version $(VERSION) -epoch $(SOURCE_DATE_EPOCH) -out $(CURDIR)/dist/image $$bins
	rm -rf dist/image/bin

# The image builder's tests (reproducible bytes, the tarballs load back), then `make image` twice:
# the same tree must give the same digests.
image-test:
	cd packaging/image && $(GO) vet ./... && $(GO) test -count=1 ./...
	$(MAKE) image >/dev/null && sha256sum dist/image/*.tar >dist/image-sums.1
	$(MAKE) image >/dev/null && sha256sum dist/image/*.tar | diff -u dist/image-sums.1 - && \
		echo "make image: the same bytes twice" && rm -f dist/image-sums.1

# deploy/: the Helm chart rendered with helm's Go packages (defaults, overrides, bad values), every
# object and deploy/netready.yaml checked against the Kubernetes schema (kubeconform, offline),
# the ConfigMap's plugin object parsed by pkg/config. A module of its own (helm and k8s stay out of
# the plugin's go.mod); needs neither root nor a cluster.
deploy-test:
	cd deploy/test && $(GO) vet ./... && $(GO) test -count=1 ./...
