"""Delivery over DICOMweb (STOW-RS) to a real Orthanc with its DICOMweb plugin (Debian
``orthanc-dicomweb``), alone and beside a C-STORE peer: delivered, Orthanc down, wrong
credentials, a rotated secret. No model is involved: the result sent is a real 12-lead ECG
file (the ``site`` fixture)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from certs import make_certs
from peers import PACS_AET, Orthanc, StoreSCP, TlsProxy, free_port
from pydicom import Dataset

from ecg_dicom.config import DicomWeb, Folders, Pacs, WebAuth, load_config
from ecg_dicom.errors import ConfigError
from ecg_dicom.outputs.dicomweb import StowRs, classify_response
from ecg_dicom.outputs.pacs import Delivery, Outcome
from ecg_dicom.queue import Job, JobQueue

pytestmark = pytest.mark.slow
USER, PASSWORD = "stow", "s3cret-for-tests"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """Orthanc with DICOMweb and basic auth (user ``stow``)."""
    with Orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True, users={USER: PASSWORD}) as pacs:
        yield pacs


def secret_file(folder: Path, text: str) -> Path:
    path = folder / "stow.secret"
    path.write_text(text + "\n")
    return path


def deliver_once(folders: Folders, queue: JobQueue, **pacs_args) -> Job:
    pacs = Pacs(**{"timeout_s": 5.0, "retry_initial_s": 10.0, **pacs_args})
    Delivery(queue, pacs, folders, "ECGDICOM", 8).deliver(queue.due(time.time(), 8))
    return queue.jobs()[0]


def test_stow_rs_delivers_with_basic_auth_from_a_file(site, orthanc, tmp_path):
    folders, queue, _ = site
    auth = WebAuth("basic", USER, secret_file=secret_file(tmp_path, PASSWORD))
    job = deliver_once(folders, queue, dicomweb=DicomWeb(orthanc.dicomweb_url, auth=auth))
    assert job.state == "done" and job.delivered_to == ("dicomweb",)
    assert orthanc.copies_of(folders.output / "r.dcm") == 1


def test_wrong_credentials_are_dead_lettered_then_redelivered_once_fixed(site, orthanc, tmp_path):
    """A 401 is not transient: dead letter with the key to fix; the secret is read before
    every request, so once the file is right, redeliver sends it."""
    folders, queue, job_id = site
    secret = secret_file(tmp_path, "wrong-password")
    web = DicomWeb(orthanc.dicomweb_url, auth=WebAuth("basic", USER, secret_file=secret))
    job = deliver_once(folders, queue, dicomweb=web)
    assert job.state == "dead" and job.attempts == 0
    reason = (folders.dead_letter / "r.reason.txt").read_text()
    assert "HTTP 401" in reason and "pacs.dicomweb.auth" in reason and "wrong-password" not in reason
    secret_file(tmp_path, PASSWORD)
    assert queue.redeliver([job_id]) == 1
    assert deliver_once(folders, queue, dicomweb=web).state == "done"
    assert orthanc.copies_of(folders.output / "r.dcm") == 1


def test_bearer_token_from_the_environment_is_sent(site, orthanc, monkeypatch):
    """Orthanc knows basic auth only: a bearer token is refused with 401, which proves it was
    sent as the Authorization header (and read from the environment)."""
    folders, queue, _ = site
    monkeypatch.setenv("ECG_STOW_TOKEN", "a-token")
    web = DicomWeb(orthanc.dicomweb_url, auth=WebAuth("bearer", secret_env="ECG_STOW_TOKEN"))
    assert "HTTP 401" in deliver_once(folders, queue, dicomweb=web).reason
    monkeypatch.delenv("ECG_STOW_TOKEN")
    with pytest.raises(ConfigError, match=r"pacs\.dicomweb\.auth\.secret_env: \$ECG_STOW_TOKEN is empty or not set"):
        StowRs(Pacs(dicomweb=web), folders)


def test_nobody_listening_is_retried_later(site):
    folders, queue, _ = site
    job = deliver_once(folders, queue, dicomweb=DicomWeb(f"http://127.0.0.1:{free_port()}/dicom-web"))
    assert job.state == "delivering" and job.attempts == 1 and "no connection" in job.reason
    assert time.time() + 4 < job.next_attempt <= time.time() + 10


def test_wrong_url_is_permanent(site, orthanc, tmp_path):
    folders, queue, _ = site
    auth = WebAuth("basic", USER, secret_file=secret_file(tmp_path, PASSWORD))
    job = deliver_once(folders, queue, dicomweb=DicomWeb(orthanc.url + "/no-such-root", auth=auth))
    assert job.state == "dead" and "HTTP 404" in job.reason


def test_both_destinations_a_retry_goes_only_where_it_is_missing(site, orthanc, tmp_path):
    """C-STORE peer down, STOW-RS fine: retried, and the retry sends to the C-STORE peer only."""
    folders, queue, job_id = site
    auth = WebAuth("basic", USER, secret_file=secret_file(tmp_path, PASSWORD))
    web = DicomWeb(orthanc.dicomweb_url, auth=auth)
    port = free_port()
    job = deliver_once(folders, queue, ae_title=PACS_AET, host="127.0.0.1", port=port, dicomweb=web)
    assert job.state == "delivering" and job.delivered_to == ("dicomweb",)
    assert "STOW-RS" in job.reason and "association not established" in job.reason
    queue.retry_later(job_id, 0.0, "test: due again now")
    scp = StoreSCP(tmp_path / "storescp")
    scp.port = port  # now listening on the port the configuration names
    with scp:
        web_down = DicomWeb(f"http://127.0.0.1:{free_port()}/dicom-web")  # would fail if it were tried
        job = deliver_once(folders, queue, ae_title=PACS_AET, host="127.0.0.1", port=port, dicomweb=web_down)
    assert job.state == "done" and set(job.delivered_to) == {"dicom", "dicomweb"}
    assert [p.name for p in (tmp_path / "storescp").iterdir()]


def test_https_with_a_ca_bundle(site, tmp_path):
    """STOW-RS over TLS: Orthanc's certificate checked against pacs.dicomweb.ca; against
    another CA (the system's) the handshake fails: retried, with the key to check named."""
    certs = make_certs(tmp_path / "certs")
    folders, queue, job_id = site
    with Orthanc(tmp_path / "orthanc-tls", dicomweb=True) as pacs, \
            TlsProxy(pacs.http_port, certs.server_crt, certs.server_key) as tls:
        url = f"https://127.0.0.1:{tls.port}/dicom-web"
        job = deliver_once(folders, queue, dicomweb=DicomWeb(url))  # the system's CAs only
        assert job.state == "delivering" and "TLS: certificate verify failed (check pacs.dicomweb.ca)" in job.reason
        queue.retry_later(job_id, 0.0, "test: due again now")
        job = deliver_once(folders, queue, dicomweb=DicomWeb(url, ca=certs.ca_crt))
        assert job.state == "done" and pacs.copies_of(folders.output / "r.dcm") == 1


@pytest.mark.parametrize("web, error", [
    ({"url": "http://user:pw@pacs/dicom-web"}, "credentials do not belong in the URL"),
    ({"url": "ftp://pacs/dicom-web"}, "is not an http:// or https:// URL"),
    ({"url": "http://pacs/dicom-web", "auth": {"scheme": "basic", "username": "u"}},
     "give exactly one of secret_file and secret_env"),
    ({"url": "http://pacs/dicom-web", "auth": {"scheme": "bearer", "username": "u", "secret_env": "X"}},
     "username goes with scheme basic"),
    ({"url": "http://pacs/dicom-web", "auth": {"scheme": "basic", "username": "u", "password": "pw"}},
     "unknown key 'pacs.dicomweb.auth.password'"),
])
def test_dicomweb_configuration_errors_name_the_key(tmp_path, web, error):
    cfg = tmp_path / "site.yaml"
    cfg.write_text(yaml.safe_dump({"ae_title": "ECGDICOM", "folders": {"watch": "in", "output": "out", "work": "w"},
                                   "pacs": {"dicomweb": web}}))
    with pytest.raises(ConfigError, match=re.escape(error)) as exc:
        load_config(cfg)
    assert str(exc.value).startswith(("pacs.dicomweb", "unknown key"))


def test_a_pacs_section_needs_a_destination(tmp_path):
    cfg = tmp_path / "site.yaml"
    cfg.write_text(yaml.safe_dump({"ae_title": "ECGDICOM", "folders": {"watch": "in", "output": "out", "work": "w"},
                                   "pacs": {"timeout_s": 5.0}}))
    with pytest.raises(ConfigError, match="name a C-STORE peer"):
        load_config(cfg)


@pytest.mark.parametrize("failures, outcome", [([], Outcome.DELIVERED), ([0xA700], Outcome.TRANSIENT),
                                               ([0xC000], Outcome.PERMANENT), ([0xA700, 0x0110], Outcome.PERMANENT)])
def test_stow_answer_table(failures, outcome):
    answer = Dataset()
    items = []
    for code in failures:
        item = Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3"
        item.FailureReason = code
        items.append(item)
    if items:
        answer.FailedSOPSequence = items
    assert classify_response(answer)[0] is outcome
