"""A real Orthanc DICOM server with its DICOMweb plugin, on a loopback port, for the ingest tests.

Orthanc and the plugin are Debian packages (``orthanc``, ``orthanc-dicomweb``) that the
Makefile's ``system-packages`` target installs; without them the tests fail, never skip.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc: its REST root and its DICOMweb root."""

    url: str
    process: subprocess.Popen

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, data: bytes) -> None:
        """Store one DICOM file's bytes (REST ``POST /instances``)."""
        response = requests.post(f"{self.url}/instances", data=data, timeout=30)
        response.raise_for_status()


def free_port() -> int:
    """A loopback port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def run_orthanc(workdir: Path) -> Iterator[OrthancServer]:
    """Start Orthanc with storage, index and log in ``workdir``; stop it (terminate, then kill) after."""
    missing = [str(p) for p in (ORTHANC, DICOMWEB_PLUGIN) if not p.exists()]
    if missing:
        pytest.fail(f"Orthanc is not installed ({', '.join(missing)} missing): `make test` installs it "
                    "(Makefile target system-packages: apt-get install orthanc orthanc-dicomweb)", pytrace=False)
    port = free_port()
    config = {
        "Name": "medfm-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,  # DICOM C-STORE/C-FIND not needed: everything goes over HTTP
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,  # loopback only, hence no authentication
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = (workdir / "orthanc.log").open("wb")
    process = subprocess.Popen([str(ORTHANC), str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                               cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, workdir / "orthanc.log")
        yield OrthancServer(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Orthanc exited with status {process.returncode}; log:\n{log.read_text()[-2000:]}",
                        pytrace=False)
        try:
            if requests.get(f"{url}/system", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"Orthanc did not answer {url}/system within {START_TIMEOUT_S:.0f} s; log:\n"
                f"{log.read_text()[-2000:]}", pytrace=False)
