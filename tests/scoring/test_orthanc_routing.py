"""Issue 22's goal with a real PACS: an instance stored into Orthanc is routed to cxr-receive, scored by the
nightly run, and its report sent back to Orthanc.

Debian's Orthanc runs as a subprocess on loopback ports (no plugins, HTTP without authentication but reachable from
this machine only), with a Lua script that sends every stored CR or DX instance to the ``cxr`` modality: cxr-receive,
started in this process with ``--ae-title CXRREVIEW --allow-ae ORTHANC``. A real CR film posted to Orthanc's REST API
arrives in the receiver's folder and the real scorer scores it; a CT instance is not routed, and a forced send of it
is refused by the receiver, so Orthanc's job fails and nothing is stored.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from db.engine import create_database_engine, read_session
from db.hashing import file_sha256
from db.models import Image, Prediction
from scoring import cli
from scoring.receive import ReceiverSettings, start_receiver
from tests.conftest import active_model_database
from tests.scoring.orthanc import ORTHANC_AET, TIMEOUT, Orthanc, report_numbers, running_orthanc

pytestmark = pytest.mark.slow

RECEIVER_AET = "CXRREVIEW"
FILM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"  # the real CR film in shared/data/dicom

# Every stored CR or DX instance goes to the "cxr" modality; each decision is printed to Orthanc's log (instance
# ids only: no patient), so that the test can tell "not routed" from "not routed yet".
ROUTING_LUA = """\
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if modality == 'CR' or modality == 'DX' then
    print('cxr-route: sending ' .. instanceId)
    SendToModality(instanceId, 'cxr')
  else
    print('cxr-route: skipped ' .. instanceId .. ' (' .. tostring(modality) .. ')')
  end
end
"""


@dataclass
class Routing:
    orthanc: Orthanc
    folder: Path


@pytest.fixture(scope="module")
def routing(tmp_path_factory):
    """cxr-receive in this process and a real Orthanc routing CR/DX to it; both stopped at the end."""
    root = tmp_path_factory.mktemp("orthanc-routing")
    folder = root / "inbox"
    receiver = start_receiver(ReceiverSettings(folder=folder, ae_title=RECEIVER_AET, allowed_callers=(ORTHANC_AET,),
                                               port=0, stop_grace_seconds=2))
    try:
        (root / "route.lua").write_text(ROUTING_LUA)
        with running_orthanc(root, DicomModalities={"cxr": [RECEIVER_AET, "127.0.0.1", receiver.port]},
                             LuaScripts=[str(root / "route.lua")]) as orthanc:
            yield Routing(orthanc, folder)
    finally:
        receiver.stop()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_a_cr_film_stored_into_orthanc_is_routed_received_and_scored(routing, dicom_dir, tiny_checkpoint, tmp_path):
    original = pydicom.dcmread(dicom_dir / FILM)
    assert original.Modality == "CR"
    stored = routing.folder / original.StudyInstanceUID / f"{original.SOPInstanceUID}.dcm"

    answer = routing.orthanc.post("/instances", (dicom_dir / FILM).read_bytes())
    assert answer["Status"] in ("Success", "AlreadyStored")
    routing.orthanc.wait_for_log(f"cxr-route: sending {answer['ID']}", "the Lua script did not route the CR film")
    deadline = time.monotonic() + TIMEOUT
    while not stored.exists():
        assert time.monotonic() < deadline, f"the film never reached cxr-receive\n{routing.orthanc.log_tail()}"
        time.sleep(0.1)

    assert not [p for p in files_under(routing.folder) if p.name.endswith(".part")]
    received = pydicom.dcmread(stored)
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert received.PixelData == original.PixelData
    assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID  # sent as stored

    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    active_model_database(url, tiny_checkpoint)
    results_to = f"dicom://{ORTHANC_AET}@127.0.0.1:{routing.orthanc.dicom_port}"
    assert cli.main(["--db", url, "--settle-seconds", "0", "--results-to", results_to, str(routing.folder)]) == 0
    engine = create_database_engine(url)
    try:
        with read_session(engine) as session:
            image = session.scalar(select(Image).where(Image.sop_uid == original.SOPInstanceUID))
            assert image is not None and image.sha256 == file_sha256(stored)
            prediction = session.scalar(select(Prediction).where(Prediction.image_id == image.id))
            assert prediction is not None and prediction.predicted_class in ("covid", "normal", "pneumonia")
    finally:
        engine.dispose()
    # results back: the report is in the film's study in Orthanc (and, being an SR, not routed again)
    reports = routing.orthanc.reports()
    assert [r.StudyInstanceUID for r in reports] == [original.StudyInstanceUID]
    assert {sop for sop, _ in report_numbers(reports[0])} == {original.SOPInstanceUID}


def test_a_ct_instance_is_not_routed_and_a_forced_send_is_refused(routing, pydicom_data):
    ct = pydicom_data("CT_small.dcm")
    assert pydicom.dcmread(ct).Modality == "CT"
    before = files_under(routing.folder)

    answer = routing.orthanc.post("/instances", ct.read_bytes())
    routing.orthanc.wait_for_log(f"cxr-route: skipped {answer['ID']} (CT)", "the Lua script did not see the CT")
    assert files_under(routing.folder) == before

    # Forced through Orthanc's REST API: the receiver offers no CT Image Storage context, so the job fails.
    job = routing.orthanc.post("/modalities/cxr/store",
                               json.dumps({"Resources": [answer["ID"]], "Asynchronous": True}).encode())
    deadline = time.monotonic() + TIMEOUT
    while (state := routing.orthanc.get(f"/jobs/{job['ID']}"))["State"] not in ("Success", "Failure"):
        assert time.monotonic() < deadline, f"the forced send did not finish: {state}"
        time.sleep(0.1)
    assert state["State"] == "Failure", state
    assert files_under(routing.folder) == before
