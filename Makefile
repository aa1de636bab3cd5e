# Build, test and run hcloud-k8s. SAM's makefile build method calls
# build-Poller / build-Builder with ARTIFACTS_DIR set.
GO           ?= go
export GOTOOLCHAIN := local
GOOS         ?= linux
GOARCH       ?= arm64
ARTIFACTS_DIR ?= $(CURDIR)/.aws-sam/local
LDFLAGS      := -s -w
# The Lambda Runtime Interface Emulator, pinned; the local stack runs the
# bootstraps under it as SAM does inside its container.
RIE_VERSION  := v0.0.0-20261030222936-bef5c4ba774d
GOBIN        := $(shell $(GO) env GOPATH)/bin

.PHONY: build-Poller build-Builder build test bench local invoke e2e e2e-local tools clean

build-Poller:
	GOOS=$(GOOS) GOARCH=$(GOARCH) CGO_ENABLED=0 $(GO) build -tags lambda.norpc -trimpath -ldflags '$(LDFLAGS)' \
		-o $(ARTIFACTS_DIR)/bootstrap ./functions/poller

build-Builder:
	GOOS=$(GOOS) GOARCH=$(GOARCH) CGO_ENABLED=0 $(GO) build -tags lambda.norpc -trimpath -ldflags '$(LDFLAGS)' \
		-o $(ARTIFACTS_DIR)/bootstrap ./functions/builder

# Both bootstraps for Lambda (arm64 unless GOARCH says otherwise).
build:
	$(MAKE) build-Poller ARTIFACTS_DIR=$(CURDIR)/bin/$(GOARCH)/poller
	$(MAKE) build-Builder ARTIFACTS_DIR=$(CURDIR)/bin/$(GOARCH)/builder

tools:
	@test -x $(GOBIN)/aws-lambda-rie || \
		$(GO) install github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@$(RIE_VERSION)

test: tools
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

e2e:
	$(GO) test -tags e2e -count=1 -timeout 45m -v -run TestHetznerEndToEnd ./functions/builder

clean:
	rm -rf bin .aws-sam
