"""Delivery of results over DICOMweb: STOW-RS (PS3.18 10.5), one POST to ``<url>/studies``
per job carrying all its DICOM results, with ``dicomweb-client`` (its multipart/related
encoding and response parsing; its own retrying is switched off, the job store retries).

What an answer means:

=================================================  ==========  ==============================
answer                                             outcome     action
=================================================  ==========  ==============================
200 / 202, no Failed SOP Sequence                  delivered   job done (Warning Reasons logged)
200 / 202 / 409 with failures 0xA7xx (resources)   transient   retry with back-off
200 / 202 / 409 with other failures                permanent   dead-letter folder + reason
401 / 403 (credentials refused)                    permanent   dead letter: fix pacs.dicomweb.auth,
                                                               then ``ecg-dicom redeliver``
408, 429, 5xx; no connection, timeout, TLS error   transient   retry with back-off
other 4xx (400 bad request, 404 wrong URL, 413...) permanent   dead-letter folder + reason
=================================================  ==========  ==============================

A 401 is not transient: the same credentials get the same answer, and retrying a week long
would only hide a configuration fault, so the job is dead-lettered at once with a reason
naming the key, and sent again with ``redeliver`` once the credentials are fixed (the
secret is read again before every request). Sending again is harmless: the SOP Instance
UIDs are deterministic, the PACS keeps one copy.

Credentials come from a file or the environment (``pacs.dicomweb.auth``), never from the
YAML, and never reach the log: the URL may not carry them (config check) and error texts
name only the status and the reason phrase.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from ecg_dicom.config import DicomWeb, Folders, Pacs, WebAuth
from ecg_dicom.errors import ConfigError
from ecg_dicom.outputs.destination import Outcome, dicom_results, summary
from ecg_dicom.queue import Job

LOG = logging.getLogger("ecg_dicom.dicomweb")
# dicomweb-client logs each failed instance with its UID verbatim; our own lines say what failed
logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL)
TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504)
AUTH_HTTP = (401, 403)
WARNING_REASONS = {0xB000: "coercion of data elements", 0xB006: "elements discarded",
                   0xB007: "data set does not match SOP class"}
# one POST per job: a split hour (~110 objects, tens of MB) goes as one chunked request
CHUNK_BYTES = 4 * 1024 * 1024


def read_secret(auth: WebAuth) -> str:
    """The password or token: first line of ``secret_file``, or ``$secret_env``. Raises
    ConfigError naming the key when it is missing or empty."""
    if auth.secret_file is not None:
        try:
            secret = Path(auth.secret_file).read_text(encoding="utf-8").splitlines()[:1]
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"pacs.dicomweb.auth.secret_file: cannot read {auth.secret_file} "
                              f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
        secret = secret[0].strip() if secret else ""
        where = f"pacs.dicomweb.auth.secret_file: {auth.secret_file}"
    else:
        secret = os.environ.get(auth.secret_env or "", "").strip()
        where = f"pacs.dicomweb.auth.secret_env: ${auth.secret_env}"
    if not secret:
        raise ConfigError(f"{where} is empty or not set")
    return secret


def classify_response(dataset: Dataset | None) -> tuple[Outcome, str]:
    """Outcome of a 2xx STOW-RS answer from its Failed / Referenced SOP Sequences."""
    failed = list(getattr(dataset, "FailedSOPSequence", None) or [])
    codes = [int(item.get("FailureReason", 0x0110)) for item in failed]
    if codes:
        text = summary([f"failure 0x{code:04X}" for code in codes])
        if all(0xA700 <= code <= 0xA7FF for code in codes):
            return Outcome.TRANSIENT, f"{text} (out of resources)"
        return Outcome.PERMANENT, text
    stored = list(getattr(dataset, "ReferencedSOPSequence", None) or [])
    warnings = [int(item.WarningReason) for item in stored if "WarningReason" in item]
    if warnings:
        return Outcome.DELIVERED, summary([f"warning 0x{code:04X} {WARNING_REASONS.get(code, '')}".strip()
                                           for code in warnings])
    return Outcome.DELIVERED, f"{len(stored)} stored" if stored else "stored"


def classify_http_error(response: requests.Response | None) -> tuple[Outcome, str]:
    """Outcome of an HTTP error answer (4xx / 5xx)."""
    if response is None:
        return Outcome.TRANSIENT, "HTTP error without a response"
    code = response.status_code
    text = f"HTTP {code} {response.reason or ''}".strip()
    if code in AUTH_HTTP:
        return Outcome.PERMANENT, f"{text}: credentials refused (check pacs.dicomweb.auth)"
    if code in TRANSIENT_HTTP or code >= 500:
        return Outcome.TRANSIENT, text
    if code == 409:  # every instance failed: the reasons are in the body
        try:
            outcome, why = classify_response(Dataset.from_json(response.json()))
            if outcome is not Outcome.DELIVERED:
                return outcome, f"{text}: {why}"
        except (ValueError, TypeError, KeyError):
            pass
    if code == 404:
        return Outcome.PERMANENT, f"{text} (check pacs.dicomweb.url)"
    return Outcome.PERMANENT, text


class StowRs:
    """STOW-RS to ``pacs.dicomweb``; see the module docstring for what each answer means.

    Parameters
    ----------
    pacs : timeouts and the ``dicomweb`` section (URL, CA bundle, credentials).
    folders : where the results are.
    """

    key = "dicomweb"

    def __init__(self, pacs: Pacs, folders: Folders) -> None:
        web: DicomWeb = pacs.dicomweb
        self.web = web
        self.folders = folders
        self.label = f"STOW-RS {web.url}"
        if web.auth is not None:
            read_secret(web.auth)  # at start: a missing secret stops the service with its key named
        self.timeout_s = pacs.timeout_s
        self._session: requests.Session | None = None
        self._client: DICOMwebClient | None = None
        self._last_used = 0.0

    def _connect(self) -> DICOMwebClient:
        """The client (its session keeps the HTTP connection alive), with credentials read now."""
        if self._client is None:
            session = requests.Session()
            session.verify = str(self.web.ca) if self.web.ca is not None else True
            session.trust_env = False  # no proxy or netrc credentials from the environment
            self._session = session
            self._client = DICOMwebClient(self.web.url, session=session, timeout=self.timeout_s,
                                          chunk_size=CHUNK_BYTES)
            self._client.set_http_retry_params(retry=False)  # the job store retries, with back-off
        auth = self.web.auth
        if auth is not None:
            secret = read_secret(auth)
            if auth.scheme == "basic":
                self._session.auth = (auth.username, secret)
            else:
                self._session.headers["Authorization"] = f"Bearer {secret}"
        return self._client

    def send(self, jobs: Sequence[Job], keep_open: bool) -> dict[int, tuple[Outcome, str]]:
        results: dict[int, tuple[Outcome, str]] = {}
        try:
            client = self._connect()
        except ConfigError as exc:  # the secret went missing since the start: fix it, then redeliver
            return {job.id: (Outcome.PERMANENT, str(exc)) for job in jobs}
        try:
            for job in jobs:
                results[job.id] = self._send_job(client, job)
        finally:
            self._last_used = time.monotonic()
            if not keep_open:
                self.release()
        return results

    def _send_job(self, client: DICOMwebClient, job: Job) -> tuple[Outcome, str]:
        names = dicom_results(job)
        if not names:
            return Outcome.DELIVERED, "no DICOM output"
        datasets = []
        for name in names:
            try:
                datasets.append(dcmread(self.folders.output / name))
            except (OSError, InvalidDicomError) as exc:
                return Outcome.PERMANENT, f"result file {name} unreadable: {exc}"
        try:
            answer = client.store_instances(datasets)
        except requests.HTTPError as exc:
            return classify_http_error(exc.response)
        except requests.exceptions.SSLError as exc:
            return Outcome.TRANSIENT, f"TLS: {_short(exc)} (check pacs.dicomweb.ca)"
        except requests.Timeout:
            return Outcome.TRANSIENT, f"no answer within {self.timeout_s:g} s"
        except requests.ConnectionError:
            return Outcome.TRANSIENT, "no connection (refused or unreachable)"
        except requests.RequestException as exc:
            return Outcome.TRANSIENT, f"HTTP request failed ({type(exc).__name__})"
        except (ValueError, KeyError) as exc:  # a 2xx answer in a media type or shape we cannot read
            return Outcome.TRANSIENT, f"answer not understood ({type(exc).__name__})"
        outcome, text = classify_response(answer)
        if outcome is Outcome.DELIVERED and "warning" in text:
            LOG.warning("%s: %s answered %s, counted as delivered", job.tag, self.label, text)
        return outcome, text

    def idle(self, seconds: float) -> bool:
        # released when idle like an association: a POST on a keep-alive connection the server
        # has meanwhile closed fails, and requests does not resend a POST
        return self._session is not None and time.monotonic() - self._last_used > seconds

    def release(self) -> None:
        session, self._session, self._client = self._session, None, None
        if session is not None:
            session.close()


def _short(exc: Exception) -> str:
    """The innermost reason of a requests error (e.g. ``certificate verify failed``), short."""
    text = str(exc)
    for marker in ("certificate verify failed", "wrong version number", "hostname mismatch"):
        if marker in text:
            return marker
    return type(exc).__name__
