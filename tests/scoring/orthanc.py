"""A real Orthanc (Debian's package) for the DICOM networking tests, run as a subprocess on loopback ports.

:func:`running_orthanc` writes its configuration into a folder, starts it, waits until its REST API answers and
stops it at the end. Remote access is off (loopback only); authentication is on where ``users`` are given.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from tests.conftest import missing_tool

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_AET = "ORTHANC"
TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Orthanc:
    url: str
    log: Path
    dicom_port: int
    auth: tuple[str, str] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if self.auth:
            token = base64.b64encode(":".join(self.auth).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read()
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def get(self, path: str) -> Any:
        status, answer = self.request("GET", path)
        assert status == 200, (path, status, answer, self.log_tail())
        return answer

    def post(self, path: str, body: bytes) -> Any:
        status, answer = self.request("POST", path, body)
        assert status == 200, (path, status, answer, self.log_tail())
        return answer

    def store(self, path: Path) -> str:
        """Store a DICOM file through the REST API; its Orthanc instance id."""
        answer = self.post("/instances", path.read_bytes())
        assert answer["Status"] in ("Success", "AlreadyStored"), answer
        return answer["ID"]

    def reports(self) -> list[pydicom.Dataset]:
        """Every Structured Report (Modality SR) Orthanc holds."""
        found = self.post("/tools/find", json.dumps({"Level": "Instance", "Query": {"Modality": "SR"}}).encode())
        return [pydicom.dcmread(io.BytesIO(self.file(instance))) for instance in found]

    def file(self, instance_id: str) -> bytes:
        status, body = self.request("GET", f"/instances/{instance_id}/file")
        assert status == 200, (instance_id, status)
        return body

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def wait_for_log(self, line: str, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while line not in self.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"{what}: no {line!r} in Orthanc's log\n{self.log_tail()}"
            time.sleep(0.1)


@contextlib.contextmanager
def running_orthanc(root: Path, *, dicomweb: bool = False, users: dict[str, str] | None = None,
                    **config: Any) -> Iterator[Orthanc]:
    """Orthanc with its storage under ``root``; ``config`` adds to (or overrides) its configuration."""
    if not ORTHANC.exists():
        missing_tool("orthanc (Debian package orthanc)")
    if dicomweb and not DICOMWEB_PLUGIN.exists():
        missing_tool("orthanc-dicomweb (Debian package orthanc-dicomweb)")
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    settings: dict[str, Any] = {
        "Name": "cxr-test", "StorageDirectory": str(root / "orthanc-db"), "IndexDirectory": str(root / "orthanc-db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": ORTHANC_AET,
        "RemoteAccessAllowed": False,  # loopback only
        "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        **config,
    }
    (root / "orthanc.json").write_text(json.dumps(settings, indent=2))
    auth = next(iter(users.items())) if users else None
    orthanc = Orthanc(f"http://127.0.0.1:{http_port}", root / "orthanc.log", dicom_port, auth, settings)
    with orthanc.log.open("wb") as log:
        process = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                                   cwd=root)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert process.poll() is None, f"Orthanc exited ({process.returncode})\n{orthanc.log_tail()}"
            try:
                if orthanc.request("GET", "/system")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"Orthanc did not answer\n{orthanc.log_tail()}"
            time.sleep(0.1)
        yield orthanc
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def report_numbers(report) -> dict[tuple[str, str], float]:
    """(referenced SOP Instance UID, concept meaning) -> value of each image's NUM items."""
    numbers = {}
    for findings in report.ContentSequence:
        items = findings.get("ContentSequence", [])
        refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items if i.ValueType == "IMAGE"]
        for item in items:
            if item.ValueType == "NUM":
                numbers[(refs[0], item.ConceptNameCodeSequence[0].CodeMeaning)] = float(
                    item.MeasuredValueSequence[0].NumericValue)
    return numbers
