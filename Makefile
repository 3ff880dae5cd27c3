# Two commands matter: `make serve` and `make test`. Everything else is what they need.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# The CPU build of torch lies on this machine's disk; asking for it by exact version first
# stops pip from resolving a bare `torch` to a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
DEBS    := dcmtk orthanc orthanc-dicomweb dicom3tools poppler-utils
# Every Python package version the tests ran with: install and CI resolve nothing new on their
# own. `make lock` refreshes it (a fresh venv, today's newest versions allowed by pyproject.toml).
LOCK    := constraints.txt
EXTRAS  := test,scale

.PHONY: all install system-deps test test-fast serve bench export lock clean

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

# The real records live in ../shared/data beside the clone (ECG_DICOM_TEST_DATA=/path/to/data elsewhere).
test: system-deps $(STAMP)
	$(PY) -m ruff check ecg_dicom tests bench
	$(PY) -m pytest -q -rs

# The quick loop while editing: no slow end-to-end or Ray tests (make test runs everything).
test-fast: system-deps $(STAMP)
	$(PY) -m ruff check ecg_dicom tests bench
	$(PY) -m pytest -q -rs -m "not slow and not ray"

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
	rm -rf $(VENV) var .pytest_cache
