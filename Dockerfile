# ecg-dicom service image: C-STORE listener on 11112, folders under the /data volume.
#   docker build -t ecg-dicom .
#   docker run -p 127.0.0.1:11112:11112 -v ecg-data:/data -v ./tls:/config/tls:ro \
#              [-v ./my-site.yaml:/config/site.yaml:ro] ecg-dicom
# (host loopback only; -p 11112:11112 opens the port to the network: see config/docker.yaml.
# The shipped config listens with DICOM TLS: without a certificate and key mounted at
# /config/tls/{server.crt,server.key,ca.crt} it does not start, unless your config opts out
# with listen.insecure_plaintext_ok: true)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU build of torch first, so that installing the package does not pull a CUDA build
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/ecg-dicom
COPY pyproject.toml README.md ./
COPY ecg_dicom ./ecg_dicom
RUN pip install . && rm -rf /opt/ecg-dicom/ecg_dicom /opt/ecg-dicom/build

COPY config/docker.yaml /config/site.yaml
RUN groupadd --system --gid 10001 ecg \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ecg \
    && mkdir -p /data && chown 10001:10001 /data

# numeric, so that orchestrators can check it is not root
USER 10001:10001
VOLUME ["/data"]
EXPOSE 11112
# exec form: serve is PID 1 and gets SIGTERM from `docker stop` (it exits 0 within a few seconds)
CMD ["ecg-dicom", "serve", "--config", "/config/site.yaml"]
