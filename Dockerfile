# ecg-dicom service image: C-STORE listener on 11112, folders under the /data volume.
#   make image                        (docker where it runs, else podman: localhost/ecg-dicom:latest)
#   docker build -t ecg-dicom .
#   docker run -p 127.0.0.1:11112:11112 -v ecg-data:/data [-v ./my-site.yaml:/config/site.yaml:ro] ecg-dicom
#              (+ -v ./tls:/config/tls:ro: see below)
# (host loopback only; -p 11112:11112 opens the port to the network: see config/docker.yaml.
# The shipped config listens with DICOM TLS: without a certificate and key mounted at
# /config/tls/{server.crt,server.key,ca.crt} it does not start, unless your config opts out
# with listen.insecure_plaintext_ok: true)
#
# BASE: any Debian-like image with python3 (>= 3.11) and its venv module. Without a registry,
# `make image` builds localhost/debian-base:bookworm (mmdebstrap, Debian's python3) and passes it.
# The lean install: the fast path (ONNX Runtime) only, no torch; versions pinned by constraints.txt.
ARG BASE=docker.io/library/python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# a TLS-intercepting proxy's CA for pip, where the build machine needs one: `make image` passes
# the host's bundle as the build secret pip_ca and PIP_CERT=/run/secrets/pip_ca; unset elsewhere
ARG PIP_CERT

# dependencies first, from pyproject and the pins alone: a code change reuses this layer.
# A venv on either base (Debian's own python3 refuses pip installs into the system: PEP 668).
WORKDIR /opt/ecg-dicom
COPY pyproject.toml constraints.txt ./
RUN --mount=type=secret,id=pip_ca python3 -m venv /opt/venv && pip install -q -c constraints.txt -U pip \
    && mkdir ecg_dicom && touch ecg_dicom/__init__.py README.md \
    && pip install -q -c constraints.txt . && pip uninstall -q -y ecg-dicom && rm -rf ecg_dicom build

COPY README.md ./
COPY ecg_dicom ./ecg_dicom
WORKDIR /
RUN --mount=type=secret,id=pip_ca pip install -q --no-deps /opt/ecg-dicom && pip check && rm -rf /opt/ecg-dicom

COPY config/docker.yaml /config/site.yaml
RUN groupadd --gid 10001 ecg \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ecg \
    && mkdir -p /data && chown 10001:10001 /data

# numeric, so that orchestrators can check it is not root
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 11112
# exec form: serve is PID 1 and gets SIGTERM from `docker stop` (it exits 0 within a few seconds)
CMD ["ecg-dicom", "serve", "--config", "/config/site.yaml"]
