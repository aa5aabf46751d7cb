"""C-GET and C-MOVE of instances stored in several transfer syntaxes, and decompression for uncompressed-only peers.

The samples are three MR Image Storage instances from pydicom's test files,
each stored in its own transfer syntax: Explicit VR Little Endian, JPEG 2000
and JPEG 2000 Lossless.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MPEG2MPML,
)
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.presentation import negotiate_as_acceptor
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, StudyRootQueryRetrieveInformationModelGet

from dicomd.retrieve import MAX_REQUESTED_CONTEXTS, RetrieveItem, decompress_for_peer, presentation_contexts
from tests.conftest import free_port
from tests.dicomd_process import add_identity, storescu, wait_for_end
from tests.qr_tools import dataset_bytes, final_move_response, key_arguments, movescu, run_tool, running_storescp
from tests.test_dicomd import STORESCU_PROPOSAL
from tests.test_query_retrieve import ALL_OPERATIONS, stored_file

SAMPLES = {name: Path(get_testdata_file(name)) for name in ("MR_small.dcm", "MR2_J2KI.dcm", "MR2_J2KR.dcm")}
HEADERS = {name: dcmread(path, stop_before_pixels=True) for name, path in SAMPLES.items()}
UNCOMPRESSED, J2K, J2K_LOSSLESS = HEADERS["MR_small.dcm"], HEADERS["MR2_J2KI.dcm"], HEADERS["MR2_J2KR.dcm"]
# MR_small.dcm is in one study, and both JPEG 2000 samples are in another.
BOTH_STUDIES = {"QueryRetrieveLevel": "STUDY",
                "StudyInstanceUID": f"{UNCOMPRESSED.StudyInstanceUID}\\{J2K.StudyInstanceUID}"}
JPEG_2000_STUDY = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": J2K.StudyInstanceUID}


def decompressed_pixel_data(name: str) -> bytes:
    """Return the Pixel Data of a sample as pydicom decompresses the original file."""
    reference = dcmread(SAMPLES[name])
    reference.decompress(generate_instance_uid=False)
    return reference.PixelData


def identifier_of(keys: dict[str, str]) -> Dataset:
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


def get_with_pynetdicom(port: int, keys: dict[str, str], storage_contexts: list) -> tuple[list, dict]:
    """Send a Study Root C-GET from WS1 and return (responses, {SOP Instance UID: (transfer syntax, data set)}).

    `storage_contexts` are the (SOP class, transfer syntaxes) pairs proposed
    with the SCP role, each pair as one presentation context.
    """
    ae = AE(ae_title="WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class, transfer_syntaxes in storage_contexts:
        ae.add_requested_context(sop_class, transfer_syntaxes)
    roles = [build_role(sop_class, scp_role=True) for sop_class in {sop_class for sop_class, _ in storage_contexts}]
    received = {}

    def on_store(event):
        received[event.request.AffectedSOPInstanceUID] = (event.context.transfer_syntax, event.dataset)
        return 0x0000

    association = ae.associate("127.0.0.1", port, ae_title="PACS", ext_neg=roles,
                               evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert association.is_established
    responses = list(association.send_c_get(identifier_of(keys), StudyRootQueryRetrieveInformationModelGet))
    association.release()
    return responses, received


@pytest.fixture
def stored(dicomd, session):
    """dicomd with the three samples stored by WS1, each sent by storescu in its own transfer syntax."""
    add_identity(session, "WS1", permitted=ALL_OPERATIONS)
    for name, path in SAMPLES.items():
        result = storescu(dicomd.port, "WS1", [path], STORESCU_PROPOSAL[HEADERS[name].file_meta.TransferSyntaxUID])
        assert result.returncode == 0, result.stderr
    wait_for_end(session)
    return dicomd


@pytest.mark.dcmtk
def test_stored_in_own_syntaxes(stored, settings):
    for name, header in HEADERS.items():
        stored_syntax = dcmread(stored_file(settings, header), stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert stored_syntax == header.file_meta.TransferSyntaxUID, name


@pytest.mark.dcmtk
def test_move_mixed_syntaxes_arrive(stored, session, settings, tmp_path):
    """storescp +xa accepts one syntax per context, so each stored syntax needs a context of its own."""
    port = free_port()
    add_identity(session, "VIEWER1", retrieve_host="127.0.0.1", retrieve_port=port)
    output = tmp_path / "moved"
    with running_storescp(port, "VIEWER1", output, tmp_path / "storescp.log"):
        result = movescu(stored.port, "WS1", "VIEWER1", BOTH_STUDIES, "-d")

    final = final_move_response(result.stderr)
    assert final["DIMSE Status"].startswith("0x0000"), result.stderr
    assert final["Completed Suboperations"] == "3"
    assert final["Failed Suboperations"] == "0"
    received = {dcmread(path, stop_before_pixels=True).SOPInstanceUID: path for path in output.iterdir()}
    assert sorted(received) == sorted(header.SOPInstanceUID for header in HEADERS.values())
    for name, header in HEADERS.items():
        path = received[header.SOPInstanceUID]
        assert dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == \
            header.file_meta.TransferSyntaxUID, name
        assert dataset_bytes(path) == dataset_bytes(stored_file(settings, header)), name


@pytest.mark.dcmtk
@pytest.mark.parametrize("accepted_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                         ids=["explicit", "implicit"])
def test_get_decompresses_for_uncompressed_peer(stored, accepted_syntax):
    responses, received = get_with_pynetdicom(stored.port, JPEG_2000_STUDY, [(MRImageStorage, [accepted_syntax])])

    status, _ = responses[-1]
    assert status.Status == 0x0000
    assert status.NumberOfCompletedSuboperations == 2
    assert status.NumberOfFailedSuboperations == 0
    assert sorted(received) == sorted([J2K.SOPInstanceUID, J2K_LOSSLESS.SOPInstanceUID])
    for name, header in (("MR2_J2KI.dcm", J2K), ("MR2_J2KR.dcm", J2K_LOSSLESS)):
        transfer_syntax, dataset = received[header.SOPInstanceUID]
        assert transfer_syntax == accepted_syntax, name
        assert dataset.PixelData == decompressed_pixel_data(name), name
        assert dataset.SOPInstanceUID == header.SOPInstanceUID, name


@pytest.mark.dcmtk
def test_get_keeps_accepted_compressed_syntax(stored, settings):
    contexts = [(MRImageStorage, [JPEG2000]), (MRImageStorage, [ExplicitVRLittleEndian])]

    responses, received = get_with_pynetdicom(stored.port, JPEG_2000_STUDY, contexts)

    status, _ = responses[-1]
    assert status.Status == 0x0000
    transfer_syntax, dataset = received[J2K.SOPInstanceUID]
    assert transfer_syntax == JPEG2000
    assert dataset.PixelData == dcmread(stored_file(settings, J2K)).PixelData


@pytest.mark.dcmtk
def test_getscu_prefer_j2k_decompressed(stored, tmp_path):
    """getscu +xw proposes JPEG 2000 and the uncompressed syntaxes in one context, and dicomd accepts Explicit VR LE."""
    output = tmp_path / "get"
    output.mkdir()

    keys = {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": J2K.StudyInstanceUID,
            "SOPInstanceUID": J2K.SOPInstanceUID}

    result = run_tool("getscu", ["-v", "-S", "+xw", "-od", str(output), "-aet", "WS1", "-aec", "PACS",
                                 *key_arguments(keys), "127.0.0.1", str(stored.port)])

    assert result.returncode == 0, result.stderr
    assert re.search(r"Number of Completed Suboperations\s*: 1\n", result.stderr), result.stderr
    assert re.search(r"Number of Failed Suboperations\s*: 0\n", result.stderr), result.stderr
    [path] = list(output.iterdir())
    received = dcmread(path)
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert received.SOPInstanceUID == J2K.SOPInstanceUID
    assert received.PixelData == decompressed_pixel_data("MR2_J2KI.dcm")


@pytest.mark.dcmtk
def test_get_undecodable_instance_listed_failed(stored, settings):
    """A JPEG 2000 file whose codestream cannot be decoded fails its sub-operation, and the other instance is sent."""
    corrupted = dcmread(stored_file(settings, J2K))
    corrupted.PixelData = encapsulate([b"\x00" * 64])
    corrupted.save_as(stored_file(settings, J2K), enforce_file_format=True)

    responses, received = get_with_pynetdicom(stored.port, JPEG_2000_STUDY,
                                              [(MRImageStorage, [ExplicitVRLittleEndian])])

    status, response_identifier = responses[-1]
    assert status.Status == 0xB000
    assert status.NumberOfCompletedSuboperations == 1
    assert status.NumberOfFailedSuboperations == 1
    assert response_identifier.FailedSOPInstanceUIDList == J2K.SOPInstanceUID
    assert list(received) == [J2K_LOSSLESS.SOPInstanceUID]
    failure_lines = [line for line in stored.log().splitlines()
                     if f"decompressing SOP instance {J2K.SOPInstanceUID}" in line]
    assert len(failure_lines) == 1, stored.log()
    assert "from JPEG 2000 Image Compression for a peer that accepted only Explicit VR Little Endian failed, " \
           "so it was not sent: " in failure_lines[0]


def accepted_contexts(sop_class: str, proposed_syntaxes: list[str], scp_role: bool = True) -> list:
    """Return the contexts dicomd's AE accepts for one proposed context, with the SCP role requested when `scp_role`."""
    requested = build_context(sop_class, proposed_syntaxes)
    requested.context_id = 1
    supported = build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                          JPEG2000, MPEG2MPML])
    supported.scu_role = True
    supported.scp_role = True
    roles = {sop_class: (False, True)} if scp_role else {}
    contexts, _ = negotiate_as_acceptor([requested], [supported], roles)
    return [context for context in contexts if context.result == 0]


def j2k_sample() -> Dataset:
    return dcmread(SAMPLES["MR2_J2KI.dcm"])


@pytest.mark.parametrize(("proposed", "scp_role", "expected_syntax"), [
    ([JPEG2000], True, JPEG2000),
    ([ExplicitVRBigEndian], True, JPEG2000),
    ([ExplicitVRLittleEndian], False, JPEG2000),
    ([ExplicitVRLittleEndian], True, ExplicitVRLittleEndian),
    ([ImplicitVRLittleEndian], True, ExplicitVRLittleEndian),
], ids=["compressed-accepted", "big-endian-only", "no-scp-role", "explicit-accepted", "implicit-accepted"])
def test_decompress_for_peer_cases(proposed, scp_role, expected_syntax):
    dataset = decompress_for_peer(j2k_sample(), accepted_contexts(MRImageStorage, proposed, scp_role), "test")

    assert dataset.file_meta.TransferSyntaxUID == expected_syntax
    assert dataset.SOPInstanceUID == J2K.SOPInstanceUID


def test_decompress_for_peer_uncompressed_unchanged():
    dataset = dcmread(SAMPLES["MR_small.dcm"])
    pixel_data = dataset.PixelData

    sent = decompress_for_peer(dataset, accepted_contexts(MRImageStorage, [ImplicitVRLittleEndian]), "test")

    assert sent is dataset
    assert sent.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert sent.PixelData == pixel_data


def test_decompress_for_peer_no_decoder(caplog):
    """pydicom (3.0) has no decoder for MPEG2, so the instance becomes one that pynetdicom cannot send."""
    dataset = j2k_sample()
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML

    with caplog.at_level(logging.WARNING, logger="dicomd.retrieve"):
        sent = decompress_for_peer(dataset, accepted_contexts(MRImageStorage, [ExplicitVRLittleEndian]), "association 7")

    assert not hasattr(sent, "file_meta")
    assert sent.SOPInstanceUID == J2K.SOPInstanceUID
    assert sent.SOPClassUID == MRImageStorage
    assert "PixelData" not in sent
    [record] = caplog.records
    assert record.getMessage().startswith(f"association 7: decompressing SOP instance {J2K.SOPInstanceUID} from "
                                          "MPEG2 Main Profile / Main Level for a peer that accepted only Explicit VR "
                                          "Little Endian failed, so it was not sent: ")
    assert "\n" not in record.getMessage()


def retrieve_item(sop_class_uid: str, transfer_syntax_uid: str, number: int) -> RetrieveItem:
    return RetrieveItem(sop_class_uid=sop_class_uid, sop_instance_uid=f"1.2.3.{number}",
                        transfer_syntax_uid=transfer_syntax_uid, path=Path(f"{number}.dcm"))


def test_contexts_one_per_class_and_syntax():
    items = [
        retrieve_item(MRImageStorage, ExplicitVRLittleEndian, 1),
        retrieve_item(MRImageStorage, JPEG2000, 2),
        retrieve_item(MRImageStorage, ExplicitVRLittleEndian, 3),
        retrieve_item(CTImageStorage, JPEG2000, 4),
    ]

    contexts = presentation_contexts(items)

    assert [(context.abstract_syntax, context.transfer_syntax) for context in contexts] == [
        (MRImageStorage, [ExplicitVRLittleEndian]),
        (MRImageStorage, [JPEG2000]),
        (CTImageStorage, [JPEG2000]),
    ]


def test_contexts_over_limit_keep_most_instances(caplog):
    """Beyond 128 pairs, the pairs with the most instances get a context and the rest are logged."""
    items = [retrieve_item(f"1.2.3.4.{number}", ExplicitVRLittleEndian, number)
             for number in range(MAX_REQUESTED_CONTEXTS + 2)]
    items += [retrieve_item("1.2.3.4.129", ExplicitVRLittleEndian, 1000)]

    with caplog.at_level(logging.WARNING, logger="dicomd.retrieve"):
        contexts = presentation_contexts(items)

    proposed = [context.abstract_syntax for context in contexts]
    assert len(proposed) == MAX_REQUESTED_CONTEXTS
    assert "1.2.3.4.129" in proposed
    assert "1.2.3.4.128" not in proposed
    [record] = caplog.records
    assert record.getMessage().startswith("2 instances get no presentation context of their own and may fail, "
                                          "because the instances need 130 ")
