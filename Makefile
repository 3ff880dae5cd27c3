# Two commands matter: `make serve` and `make test`. Everything else is what they need.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# The CPU build of torch lies on this machine's disk; asking for it by exact version first
# stops pip from resolving a bare `torch` to a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
DEBS    := dcmtk orthanc orthanc-dicomweb dicom3tools poppler-utils
# the container test: podman (runc), and mmdebstrap for a base image without a registry
CONTAINER_DEBS := podman runc mmdebstrap
# Every Python package version the tests ran with: install and CI resolve nothing new on their
# own. `make lock` refreshes it (a fresh venv, today's newest versions allowed by pyproject.toml).
LOCK    := constraints.txt
EXTRAS  := test,scale

# -- the container image (make image) ------------------------------------------------------
IMAGE       := localhost/ecg-dicom:latest
# pulled where a registry answers; else a Debian bookworm base made here (mmdebstrap: no registry)
BASE_IMAGE  ?= docker.io/library/python:3.11-slim
LOCAL_BASE  := localhost/debian-base:bookworm
IMAGE_STAMP := .image.stamp
# podman's settings for machines without systemd (runc, cgroupfs); a CONTAINERS_CONF of yours wins
CONTAINERS_CONF ?= $(CURDIR)/config/containers.conf
export CONTAINERS_CONF
# docker where its engine answers, else podman
ENGINE      ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
# a CA bundle pip needs (a TLS-intercepting proxy): handed to a podman build
PIP_CA      ?= $(or $(PIP_CERT),$(shell python3 -m pip config get global.cert 2>/dev/null))
IMAGE_INPUTS := Dockerfile .dockerignore pyproject.toml $(LOCK) README.md config/docker.yaml \
                $(shell find ecg_dicom -type f ! -name '*.pyc' ! -path '*/__pycache__/*')

.PHONY: all install system-deps test test-fast serve bench export lock clean image local-base test-image

all: test

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q -c $(LOCK) "$(TORCH)"
	$(PY) -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

# Refresh $(LOCK) from what a fresh machine resolves today; commit the result with a test run.
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q "$(TORCH)"
	.lock-venv/bin/python -m pip install -q ".[$(EXTRAS)]"
	{ echo "# make lock, $$(date -u +%Y-%m-%d): pins for make install / CI (pip install -c $(LOCK))"; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^ecg-dicom' \
	    | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > $(LOCK)
	rm -rf .lock-venv

install: $(STAMP)

# Real DICOM peers for the tests (DCMTK, Orthanc and its DICOMweb plugin, dciodvfy) and poppler-utils (pdftotext,
# pdftoppm: the tests read the report pages we render); installed when running as root.
system-deps:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	test -x /usr/sbin/Orthanc || missing="$$missing orthanc"; \
	ls /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1 || missing="$$missing orthanc-dicomweb"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	command -v pdftoppm >/dev/null || missing="$$missing poppler-utils"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages:$$missing (run as root or install them)"; exit 1; fi; \
	fi
	@missing=""; \
	command -v podman >/dev/null || missing="$$missing podman"; \
	command -v runc >/dev/null || missing="$$missing runc"; \
	command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "not installed:$$missing (as root: the container test runs; without: it is skipped)"; fi; \
	fi

# The real records live in ../shared/data beside the clone (ECG_DICOM_TEST_DATA=/path/to/data elsewhere).
# Where podman runs, the container test needs the image: built when its inputs changed.
test: system-deps $(STAMP) test-image
	$(PY) -m ruff check ecg_dicom tests bench
	$(PY) -m pytest -q -rs

# The quick loop while editing: no slow end-to-end or Ray tests (make test runs everything).
test-fast: system-deps $(STAMP)
	$(PY) -m ruff check ecg_dicom tests bench
	$(PY) -m pytest -q -rs -m "not slow and not ray"

# The service image $(IMAGE): docker where its engine answers, else podman; the base pulled
# where a registry answers, else made here. Rebuilt when its inputs change ($(IMAGE_STAMP)).
image: $(IMAGE_STAMP)

$(IMAGE_STAMP): $(IMAGE_INPUTS)
	@engine="$(ENGINE)"; base="$(BASE_IMAGE)"; opts=""; \
	if [ "$$engine" = podman ]; then \
	  command -v podman >/dev/null || { echo "no container engine: docker's does not answer, podman is not installed"; exit 1; }; \
	  podman image exists "$$base" || timeout 120 podman pull -q "$$base" >/dev/null 2>&1 \
	    || { echo "no registry answers for $$base: building on $(LOCAL_BASE)"; base="$(LOCAL_BASE)"; \
	         $(MAKE) --no-print-directory local-base || exit 1; }; \
	  opts="--network host"; \
	  if [ -f "$(PIP_CA)" ]; then opts="$$opts --secret id=pip_ca,src=$(PIP_CA) --build-arg PIP_CERT=/run/secrets/pip_ca"; fi; \
	fi; \
	echo "$$engine build $$opts --build-arg BASE=$$base -t $(IMAGE) ."; \
	start=$$(date +%s); \
	$$engine build -q $$opts --build-arg BASE="$$base" -t $(IMAGE) . >/dev/null || exit 1; \
	echo "built $(IMAGE) in $$(( $$(date +%s) - start )) s: $$($$engine image inspect --format '{{.Size}}' $(IMAGE)) bytes"
	touch $@

# A Debian bookworm base with python3 and its venv module, made without a registry.
local-base:
	@podman image exists $(LOCAL_BASE) || { \
	  dir=$$(mktemp -d) && \
	  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,passwd bookworm $$dir/base.tar && \
	  podman import -q $$dir/base.tar $(LOCAL_BASE) >/dev/null; rc=$$?; rm -rf $$dir; exit $$rc; }

# make test: the image where podman runs (the container test skips elsewhere, saying why)
test-image:
	@if command -v podman >/dev/null && podman info >/dev/null 2>&1; then \
	  podman image exists $(IMAGE) || rm -f $(IMAGE_STAMP); \
	  $(MAKE) --no-print-directory image ENGINE=podman; \
	else echo "podman cannot run here: no image, the container test is skipped"; fi

serve: $(STAMP)
	$(VENV)/bin/ecg-dicom serve --config config/site.yaml

bench: $(STAMP)
	$(PY) bench/inference.py
	$(PY) bench/busy.py
	$(PY) bench/fast_quality.py
	$(PY) bench/quality.py
	$(PY) bench/service.py
	$(PY) bench/convert_ray.py
	$(PY) bench/backpressure.py

# After new weights land in ecg_dicom/weights/: the fast path's graphs follow them
export: $(STAMP)
	$(VENV)/bin/ecg-dicom export --input-lead I
	$(VENV)/bin/ecg-dicom export --input-lead II

clean:
	rm -rf $(VENV) var .pytest_cache $(IMAGE_STAMP)
