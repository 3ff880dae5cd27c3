"""Site configuration: loading, relative paths, and refusals that name the key."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ecg_dicom.service import status
from ecg_dicom.config import load_config
from ecg_dicom.errors import ConfigError
from ecg_dicom.queue import JobQueue

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"ae_title": "ECGDICOM", "folders": {"watch": "in", "output": "out", "work": "work"}}


def write(folder: Path, data: dict | str) -> Path:
    path = folder / "site.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def with_(base: dict, dotted: str, value: object) -> dict:
    """Deep copy of ``base`` with ``dotted`` (e.g. "listen.port") set to ``value``."""
    data = yaml.safe_load(yaml.safe_dump(base))
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return data


class TestLoad:
    def test_minimal_config_gets_defaults_and_creates_folders(self, tmp_path):
        s = load_config(write(tmp_path, MINIMAL))
        assert s.ae_title == "ECGDICOM" and s.listen.port == 11112 and s.pacs is None
        assert s.allowed_callers is None and s.input_lead == "I"
        for folder in (s.folders.watch, s.folders.output, s.folders.work, s.folders.rejected,
                       s.folders.spool, s.folders.dead_letter):
            assert folder.is_dir()

    def test_relative_paths_are_relative_to_the_config_file(self, tmp_path, monkeypatch):
        site = tmp_path / "etc" / "ecg"
        site.mkdir(parents=True)
        ckpt = tmp_path / "etc" / "model.pt"
        ckpt.write_bytes(b"x")
        monkeypatch.chdir(tmp_path)
        s = load_config(write(site, with_(MINIMAL, "checkpoint", "../model.pt")))
        assert s.folders.watch == site / "in"
        assert s.checkpoint == ckpt

    def test_full_config(self, tmp_path):
        data = {**MINIMAL, "listen": {"host": "0.0.0.0", "port": 104, "insecure_plaintext_ok": True},
                "allowed_callers": ["CART1", "CART2"],
                "input_lead": "II", "pacs": {"ae_title": "PACS", "host": "pacs.local", "port": 4242,
                                             "retry_initial_s": 1},
                "worker": {"batch_size": 4, "max_wait_s": 0}, "max_associations": 3, "log_level": "debug"}
        s = load_config(write(tmp_path, data))
        assert s.allowed_callers == ("CART1", "CART2")
        assert s.pacs.port == 4242 and s.pacs.retry_initial_s == 1.0 and s.pacs.timeout_s == 30.0
        assert s.worker.batch_size == 4 and s.input_lead == "II"

    def test_shipped_site_yaml_is_valid(self, tmp_path):
        # copy, so that loading it creates its folders under tmp_path, not in the repo
        cfg = tmp_path / "config" / "site.yaml"
        cfg.parent.mkdir()
        cfg.write_text((REPO / "config" / "site.yaml").read_text())
        s = load_config(cfg)
        assert s.folders.watch == tmp_path / "var" / "inbox"
        assert s.pacs is None and s.listen.port == 11112
        # safe defaults (issue 10 item 8): loopback, a named list of callers, health on loopback
        assert s.listen.host == "127.0.0.1" and s.allowed_callers and s.http.host == "127.0.0.1"

    def test_docker_site_yaml_is_valid(self, tmp_path):
        data = yaml.safe_load((REPO / "config" / "docker.yaml").read_text())
        assert data["listen"]["host"] == "0.0.0.0" and data["listen"]["port"] == 11112
        assert all(str(p).startswith("/data/") for p in data["folders"].values())
        data["folders"] = {k: str(tmp_path / k) for k in data["folders"]}  # not /data on this machine
        # issue 22 item 6: all interfaces, so TLS from a mounted key: without it the start fails
        tls = data["listen"]["tls"]
        assert all(str(tls[k]).startswith("/config/tls/") for k in ("cert", "key"))
        with pytest.raises(ConfigError, match=r"^listen\.tls\.cert: .*no such file /config/tls/"):
            load_config(write(tmp_path, data))
        for key in ("cert", "key", "ca"):
            (tmp_path / f"{key}.pem").write_text("PEM")
            tls[key] = str(tmp_path / f"{key}.pem")
        assert load_config(write(tmp_path, data)).ae_title == "ECGDICOM"
        # the documented opt-out instead of TLS
        del data["listen"]["tls"]
        with pytest.raises(ConfigError, match=r"^listen: .*insecure_plaintext_ok"):
            load_config(write(tmp_path, data))
        data["listen"]["insecure_plaintext_ok"] = True
        assert load_config(write(tmp_path, data)).listen.tls is None
        assert "COPY config/docker.yaml /config/site.yaml" in (REPO / "Dockerfile").read_text()
        # safe defaults: callers named, and the bind choice explained where it is made
        assert data["allowed_callers"]
        text = (REPO / "config" / "docker.yaml").read_text()
        assert "Bind choice" in text and "-p 127.0.0.1:11112:11112" in (REPO / "Dockerfile").read_text()


class TestRefusals:
    @pytest.mark.parametrize("dotted, value, key", [
        ("colour", "blue", "colour"),
        ("listen.prot", 11112, "listen.prot"),
        ("pacs", {"ae_title": "P", "host": "h", "port": 1, "retries": 3}, "pacs.retries"),
        ("listen.port", 70000, "listen.port"),
        ("listen.port", 0, "listen.port"),
        ("listen.port", "11112", "listen.port"),
        ("listen.port", True, "listen.port"),
        ("ae_title", "A_TITLE_LONGER_THAN_16", "ae_title"),
        ("ae_title", "", "ae_title"),
        ("allowed_callers", "CART1", "allowed_callers"),
        ("allowed_callers", [], "allowed_callers"),
        ("allowed_callers", ["OK", "BAD\\AE"], "allowed_callers[1]"),
        ("input_lead", "V1", "input_lead"),
        ("pacs", {"ae_title": "PACS", "host": "h"}, "pacs.port"),
        ("pacs", {"ae_title": "PACS", "host": "h", "port": 99999}, "pacs.port"),
        ("worker.batch_size", 0, "worker.batch_size"),
        ("log_level", "LOUD", "log_level"),
        ("checkpoint", "missing.pt", "checkpoint"),
        ("folders", {"watch": "a", "output": "a", "work": "w"}, "folders"),
        ("folders", {"watch": "a", "output": "b"}, "folders.work"),
        ("listen", [11112], "listen"),
        ("listen", {"host": "0.0.0.0"}, "listen"),        # plain DICOM on a network: an explicit choice
        ("listen", {"host": "10.1.2.3", "insecure_plaintext_ok": "yes"}, "listen.insecure_plaintext_ok"),
    ])
    def test_error_names_the_key(self, tmp_path, dotted, value, key):
        with pytest.raises(ConfigError) as err:
            load_config(write(tmp_path, with_(MINIMAL, dotted, value)))
        assert str(err.value).startswith(key) or repr(key) in str(err.value), str(err.value)

    def test_folder_that_cannot_be_created(self, tmp_path):
        (tmp_path / "blocker").write_text("a file, not a folder")
        data = with_(MINIMAL, "folders.output", "blocker/out")
        with pytest.raises(ConfigError, match=r"^folders\.output: cannot create"):
            load_config(write(tmp_path, data))

    def test_not_yaml_and_missing_file(self, tmp_path):
        with pytest.raises(ConfigError, match="not valid YAML"):
            load_config(write(tmp_path, "ae_title: [unclosed"))
        with pytest.raises(ConfigError, match="config file"):
            load_config(tmp_path / "nope.yaml")


class TestCommands:
    def test_serve_exits_2_naming_the_key(self, tmp_path):
        cfg = write(tmp_path, with_(MINIMAL, "listen.portt", 11112))
        out = subprocess.run([sys.executable, "-m", "ecg_dicom", "serve", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2
        assert "listen.portt" in out.stderr

    def test_serve_exits_2_when_the_port_is_taken(self, tmp_path, tiny_checkpoint):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            data = {**MINIMAL, "checkpoint": str(tiny_checkpoint),
                    "listen": {"host": "127.0.0.1", "port": busy.getsockname()[1]}}
            out = subprocess.run([sys.executable, "-m", "ecg_dicom", "serve", "--config", str(write(tmp_path, data))],
                                 capture_output=True, text=True, timeout=120)
        assert out.returncode == 2
        assert "listen: cannot listen on" in out.stderr

    def test_status_prints_every_count(self, tmp_path, capsys):
        cfg = write(tmp_path, MINIMAL)
        queue = JobQueue(tmp_path / "work" / "queue.sqlite3")
        for i in range(3):
            queue.add(f"{i:016x}", f"n{i}", "test", f"s{i}")
        job = queue.claim(1)[0]
        queue.reject(job.id, "bad")
        queue.close()
        assert status.run(argparse.Namespace(config=str(cfg))) == 0
        out = capsys.readouterr().out
        counts = {label: int(value.split()[0]) for label, _, value in (line.partition(":") for line in out.splitlines())
                  if label in status.LABELS.values()}
        assert counts == {
            "waiting": 2, "processing": 0, "delivering": 0, "done": 0, "rejected": 1, "dead-lettered": 0}
        assert out.startswith("service:       NOT RUNNING") and "job 1 " in out and ": bad" in out

    def test_status_bad_config_exits_2(self, tmp_path, capsys):
        cfg = write(tmp_path, with_(MINIMAL, "bogus", 1))
        assert status.run(argparse.Namespace(config=str(cfg))) == 2
        assert "bogus" in capsys.readouterr().err
