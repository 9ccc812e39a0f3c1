# imsidecar — build, test and demo entry points.
#
# `make demo` and `make test` are the whole set-up on a fresh Debian/Ubuntu
# machine: both install the Debian packages they need first (see `deps`).

SHELL      := /bin/bash
GO         ?= go
BIN        := bin/imsidecar
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -s -w -X expressolivre.org/imsidecar/sidecar.version=$(VERSION)
FUZZTIME   ?= 30s
FUZZSHORT  ?= 3s
TESTFLAGS  ?=
GOTEST_TIMEOUT ?= 45m

# Debian packages the tests and the demo run for real.
DEB_PACKAGES := prosody redis-server php-cli php-redis php-curl php-mbstring \
	memcached php-memcached php-memcache \
	php-xml phpunit apache2 libapache2-mod-php chromium nodejs npm ejabberd \
	ca-certificates openssl curl systemd lintian

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z-]+:.*## /{printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## install missing Debian packages (apt-get, via sudo when not root)
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  if [ "$$p" = nodejs ] || [ "$$p" = npm ]; then command -v $${p/nodejs/node} >/dev/null 2>&1 && continue; fi; \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "installing:$$missing"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; \
	else echo "make: cannot install packages (not root, no passwordless sudo). Run:"; \
	  echo "  sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; fi; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing \
	  || { $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; } \
	  || { echo "make: apt-get failed; install by hand: apt-get install -y$$missing"; exit 1; }
	@command -v $(GO) >/dev/null || { echo "make: Go 1.26 is required (https://go.dev/dl/), then re-run"; exit 1; }

.PHONY: build
build: ## build bin/imsidecar
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./sidecar/cmd/imsidecar

DEB_ARCHS  ?= amd64 arm64

.PHONY: deb
deb: ## build bin/imsidecar_<version>_<arch>.deb for DEB_ARCHS (amd64 arm64) with dpkg-deb
	@for a in $(DEB_ARCHS); do GO=$(GO) examples/debian/build.sh $$a bin || exit 1; done

examples/browser/node_modules: examples/browser/package.json examples/browser/package-lock.json
	cd examples/browser && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

examples/expresso/standin/node_modules: examples/expresso/standin/package.json examples/expresso/standin/package-lock.json
	cd examples/expresso/standin && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: test
test: deps examples/browser/node_modules examples/expresso/standin/node_modules ## run every test: unit, fuzz seeds, integration, PHP client, browser
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout $(GOTEST_TIMEOUT) $(TESTFLAGS) ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZSHORT)

.PHONY: test-short
test-short: ## unit tests only (go test -short): Go alone, no Prosody/Redis/PHP/Apache/Chromium
	$(GO) test -short -count=1 $(TESTFLAGS) ./...

.PHONY: fuzz
fuzz: ## run every fuzz target of every package for FUZZTIME (default 30s) each; crashers become regression seeds
	@# Go 1.26's fuzz coordinator can fail a target with a bare "context
	@# deadline exceeded" at the end of -fuzztime, writing no input
	@# (golang/go#75804, fixed in Go 1.27). Such a run is repeated once; a
	@# written input, any other error, or a second such run fails.
	@set -e; n=0; log=$$(mktemp); trap 'rm -f $$log' EXIT; \
	for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    n=$$((n+1)); \
	    for try in 1 2; do \
	      echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	      seeds=$$(ls $$dir/testdata/fuzz/$$f 2>/dev/null | wc -l); \
	      if $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg 2>&1 | tee $$log; test $${PIPESTATUS[0]} -eq 0; then break; fi; \
	      if [ $$try = 1 ] && [ "$$(ls $$dir/testdata/fuzz/$$f 2>/dev/null | wc -l)" = "$$seeds" ] \
	        && grep -q '^    context deadline exceeded$$' $$log && ! grep -q 'Failing input written' $$log; then \
	        echo "make fuzz: $$f stopped on Go's fuzztime deadline race (golang/go#75804), no input written: once more"; continue; fi; \
	      echo "make fuzz: $$f failed; its input is in $$dir/testdata/fuzz/$$f/"; \
	      echo "  fix the bug and commit that file: it then runs as a regression seed in every go test"; exit 1; \
	    done; \
	  done; \
	done; echo "make fuzz: $$n fuzz targets, $(FUZZTIME) each, no failure"

SOAK_USERS    ?= 2000
SOAK_DURATION ?= 10m
SOAK_TIMEOUT  ?= 60m

.PHONY: soak
soak: deps ## hold SOAK_USERS (2000) users chatting for SOAK_DURATION (10m); fails on RSS/goroutine/fd growth or a lost message
	SOAK_USERS=$(SOAK_USERS) SOAK_DURATION=$(SOAK_DURATION) $(GO) test -count=1 -run '^TestSoak$$' -v -timeout $(SOAK_TIMEOUT) ./sidecar

.PHONY: faults
faults: deps ## the fault-injection matrices in full: one node (30 s outages, 2000 cut polls), then the cluster's (faults-cluster); prints the tables
	@mkdir -p bin
	IMSIDECAR_FAULTS=full IMSIDECAR_FAULTS_TABLE=$(CURDIR)/bin/faults.md \
	  $(GO) test -race -count=1 -timeout 30m -run '^TestFaults$$' -v ./sidecar; \
	  rc=$$?; echo; cat bin/faults.md 2>/dev/null; \
	  $(MAKE) --no-print-directory faults-cluster || rc=1; exit $$rc

# The cluster matrix runs without -race: the test process is the load
# balancer and the load (CLUSTER_USERS users, CLUSTER_RATE msg/s) for three
# daemons, Prosody and Redis on the same machine.
CLUSTER_USERS ?= 2000
CLUSTER_RATE  ?= 500

.PHONY: faults-cluster
faults-cluster: deps ## the cluster fault matrix in full (issue 20): 3 nodes, CLUSTER_USERS (2000) users at CLUSTER_RATE (500) msg/s, AOF Redis and Redis Cluster; prints the table
	@mkdir -p bin
	IMSIDECAR_FAULTS=full IMSIDECAR_CLUSTER_USERS=$(CLUSTER_USERS) IMSIDECAR_CLUSTER_RATE=$(CLUSTER_RATE) \
	  IMSIDECAR_FAULTS_TABLE=$(CURDIR)/bin/faults-cluster.md \
	  $(GO) test -count=1 -timeout 120m -run '^TestClusterFaults$$' -v ./sidecar; \
	  rc=$$?; echo; cat bin/faults-cluster.md 2>/dev/null; exit $$rc

.PHONY: bench
bench: deps build ## Go micro-benchmarks, then the load test: 1,000 users, sidecar vs BOSH vs WebSocket, the sidecar with STARTTLS, a 3-node cluster vs one node, and the sidecar's own BOSH and WebSocket vs Prosody's (bench/results.json)
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2000x ./phpsession ./sidecar
	$(GO) test -run '^$$' -bench 'Stanza|InboundDelivery' -benchmem -benchtime 20000x ./xmppconn
	$(GO) test -run '^$$' -bench 'IdleConnMemory' -benchtime 1x ./xmppconn
	$(GO) run ./sidecar/internal/loadtest/cmd/imbench -imsidecar $(BIN) -profile quick \
	  -paths bare,sidecar,sidecar-cluster,sidecar-tls,bosh,websocket,sidecar-bosh,sidecar-websocket \
	  -users 1000 -rate 500 -duration 10s -sweep-time 3s -out bench/results.json

.PHONY: bench-full
# bench-full runs the sidecar path over h2c (HTTP/2 without TLS, prior
# knowledge): over HTTP/1.1 every pending long poll holds a connection, so
# 10,000 users cost the daemon 10,000 c2s sockets plus 10,000 API sockets,
# past a 20,000 open-files limit that cannot be raised here (EMFILE); over
# h2c the polls share users/--http2-max-streams connections.
bench-full: deps build ## the load test with 10,000 users online (bench/results.json)
	$(GO) run ./sidecar/internal/loadtest/cmd/imbench -imsidecar $(BIN) -profile full -transport h2c \
	  -users 10000 -rate 500 -duration 20s -sweep-time 5s -concurrency 200 \
	  -timeout 40m -out bench/results.json

.PHONY: demo
demo: deps build ## run Prosody, the demo PHP app and the sidecar locally (Ctrl-C stops all)
	BIN=$(BIN) examples/demo/run.sh

.PHONY: lint
lint: ## go vet, gofmt, staticcheck (pinned by the tool directive in go.mod)
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) tool staticcheck ./...

.PHONY: tidy-check
tidy-check: ## fail if go.mod/go.sum are not tidy
	@orig=$$(mktemp -d); trap 'rm -rf $$orig' EXIT; cp go.mod go.sum $$orig/; \
	$(GO) mod tidy; \
	if ! diff -q go.mod $$orig/go.mod >/dev/null || ! diff -q go.sum $$orig/go.sum >/dev/null; then \
	  diff -u $$orig/go.mod go.mod; cp $$orig/go.mod $$orig/go.sum .; \
	  echo "go.mod/go.sum not tidy: run go mod tidy"; exit 1; fi

.PHONY: clean
clean: ## remove build outputs
	rm -rf bin examples/browser/out
