# vlmops: `make demo` and `make test` set everything up on a fresh machine (Python 3.11, a .venv).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov and kubernetes-validate pin packages of their own: a venv apart from the app's
K8S_VENV := .venv-k8s
K8S_STAMP := $(K8S_VENV)/.installed

.PHONY: setup browser demo test lint bench bench-scale serve proto k8s k8s-tools images push lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: pip takes the pinned wheels from this machine's disk
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	# the runtime at the images' locked versions (a newer release on the registry changes nothing here)
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/vlmops demo

# the explorer's tests drive Debian's Chromium with Playwright (never `playwright install`: no downloads here)
browser:
	@command -v chromium > /dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

# the app's venv, the k8s tools' venv and Chromium install side by side (they wait on the disk and the registry,
# not on each other)
test:
	$(MAKE) -j3 --no-print-directory setup k8s-tools browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -rs --durations=25

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m bench.embedding
	$(BIN)/python -m bench.grpc_vs_http
	$(BIN)/python -m bench.vision
	$(BIN)/python -m bench.index
	$(BIN)/python -m bench.pipeline_stages
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.pipeline --arch vlmops-toy-clip --n 20000 --batch 64 --blobs /dev/shm
	$(BIN)/python -m bench.finetune
	$(BIN)/python -m bench.class_eval

# the bulk paths at 10,000 and 100,000 items: the time an item costs at each (linearity)
bench-scale: setup
	$(BIN)/python -m bench.scale

serve: setup
	$(BIN)/vlmops serve embedding --port 3000

# the gRPC code (services/proto/vlmops/v1/*_pb2*.py) from the .proto files, with the pinned grpcio-tools;
# committed, and a test fails when it is stale
proto: setup
	$(BIN)/python -m services.proto.generate

k8s-tools: $(K8S_STAMP)

$(K8S_STAMP):
	test -x $(K8S_VENV)/bin/python || $(PYTHON) -m venv $(K8S_VENV)
	$(K8S_VENV)/bin/pip install -q checkov==3.3.30 kubernetes-validate==1.37.0
	touch $(K8S_STAMP)

# render, validate and check the overlays (what the tests in tests/k8s do)
k8s: setup k8s-tools
	$(BIN)/python -m pytest -q tests/k8s

# the two images (Dockerfile targets cpu and gpu), tagged with pyproject.toml's version; stdout: the tags.
# Builds them where a Docker engine answers, otherwise only prints the tags. Needs no venv.
REGISTRY ?= ghcr.io/vlmops
VERSION ?= $(shell sed -n '/^\[project\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml)
DOCKER ?= docker
IMAGE_TARGETS := cpu gpu

images:
	@if $(DOCKER) info > /dev/null 2>&1; then \
	  for t in $(IMAGE_TARGETS); do \
	    $(DOCKER) build --platform linux/amd64 --target $$t --build-arg VERSION=$(VERSION) \
	      -t $(REGISTRY)/vlmops-$$t:$(VERSION) . >&2 || exit 1; \
	  done; \
	else \
	  echo "make images: no Docker engine answers here, so nothing is built; where one runs:" >&2; \
	  for t in $(IMAGE_TARGETS); do \
	    echo "  docker build --platform linux/amd64 --target $$t --build-arg VERSION=$(VERSION) -t $(REGISTRY)/vlmops-$$t:$(VERSION) ." >&2; \
	  done; \
	fi
	@for t in $(IMAGE_TARGETS); do echo $(REGISTRY)/vlmops-$$t:$(VERSION); done

push: images
	@$(DOCKER) info > /dev/null 2>&1 || { echo "make push: no Docker engine answers here" >&2; exit 1; }
	@for t in $(IMAGE_TARGETS); do $(DOCKER) push $(REGISTRY)/vlmops-$$t:$(VERSION) >&2 || exit 1; done

# requirements.lock and requirements-cuda.lock, resolved afresh from pyproject.toml (docker/lock.py)
lock:
	$(PYTHON) docker/lock.py

clean:
	rm -rf $(VENV) $(K8S_VENV) .vlmops .pytest_cache .ruff_cache
