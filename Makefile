# Build, test and run hcloud-k8s. SAM's makefile build method calls
# build-Poller / build-Builder with ARTIFACTS_DIR set. Needs GNU make and
# Go 1.26.8 or newer (go.mod; an older go fetches that toolchain itself
# unless GOTOOLCHAIN=local).
GO           ?= go
ARTIFACTS_DIR ?= $(CURDIR)/.aws-sam/local
LDFLAGS      := -s -w
# The functions run on linux/arm64 (template.yaml). SAM runs make with the
# caller's environment, so a GOOS or GOARCH exported in a shell must not
# change what the build-* targets make; only the command line does
# (make build-Builder GOARCH=amd64). The other targets, which run on this
# machine, take the environment as go does.
LAMBDA_GOOS   := linux
LAMBDA_GOARCH := arm64
ifeq ($(origin GOOS),command line)
LAMBDA_GOOS := $(GOOS)
endif
ifeq ($(origin GOARCH),command line)
LAMBDA_GOARCH := $(GOARCH)
endif
# The Lambda Runtime Interface Emulator, pinned; the local stack runs the
# bootstraps under it as SAM does inside its container.
RIE_VERSION  := v0.0.0-20261030222936-bef5c4ba774d
GOBIN        := $(shell $(GO) env GOPATH)/bin
# The stack `make teardown` tears down (see the README, Teardown).
STACK        ?= hcloud-k8s

.PHONY: build-Poller build-Builder build test test-unit bench local invoke teardown e2e e2e-local tools clean

build-Poller:
	GOOS=$(LAMBDA_GOOS) GOARCH=$(LAMBDA_GOARCH) CGO_ENABLED=0 $(GO) build -tags lambda.norpc -trimpath -ldflags '$(LDFLAGS)' \
		-o $(ARTIFACTS_DIR)/bootstrap ./functions/poller

build-Builder:
	GOOS=$(LAMBDA_GOOS) GOARCH=$(LAMBDA_GOARCH) CGO_ENABLED=0 $(GO) build -tags lambda.norpc -trimpath -ldflags '$(LDFLAGS)' \
		-o $(ARTIFACTS_DIR)/bootstrap ./functions/builder

# Both bootstraps for Lambda (linux/arm64 unless the command line says otherwise).
build:
	$(MAKE) build-Poller ARTIFACTS_DIR=$(CURDIR)/bin/$(LAMBDA_GOARCH)/poller
	$(MAKE) build-Builder ARTIFACTS_DIR=$(CURDIR)/bin/$(LAMBDA_GOARCH)/builder

tools:
	@test -x $(GOBIN)/aws-lambda-rie || \
		$(GO) install github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@$(RIE_VERSION)

# The unit tests, in seconds, without root or the Lambda emulator: -short
# leaves the tests on the local world to make test (README, Tests). The
# tests call sfdisk, which Debian keeps in /usr/sbin, outside a user's PATH.
test-unit:
	PATH="$$PATH:/usr/sbin:/sbin" $(GO) test -short -count=1 ./...

# Everything, the end-to-end tests on the local world included. Without
# root those would be skipped, so it refuses to start.
test: tools
	@test "$$(id -u)" = 0 || { echo "make test: rescue hosts need root (mount namespaces); make test-unit runs without it" >&2; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags e2e ./...
	PATH="$(GOBIN):$$PATH" $(GO) test -race -count=1 -timeout 15m ./...
	scripts/e2e-local

bench: tools
	PATH="$(GOBIN):$$PATH" $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./...

local: tools
	PATH="$(GOBIN):$$PATH" $(GO) run ./infra/cmd/local

# One function run locally without Docker, as `sam local invoke FN -e EVENT`
# would: make invoke FN=Builder EVENT=events/build.json
invoke: tools
	PATH="$(GOBIN):$$PATH" scripts/invoke $(FN) $(EVENT)

# The same end-to-end test against the local world (part of make test).
e2e-local:
	scripts/e2e-local

# Before `sam delete`: the deployed Poller deletes the stack's build servers
# and lease keys and reports what remains (snapshots are kept).
# make teardown STACK=hcloud-k8s, or POLLER=<function name> to skip the
# look-up of the stack's PollerFunctionName output.
teardown:
	STACK="$(STACK)" POLLER="$(POLLER)" scripts/teardown

e2e:
	$(GO) test -tags e2e -count=1 -timeout 45m -v -run TestHetznerEndToEnd ./functions/builder

clean:
	rm -rf bin .aws-sam
