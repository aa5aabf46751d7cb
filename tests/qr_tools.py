"""DCMTK query/retrieve tools and a storescp process for tests, all on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.tools import dcmtk_environ, require_tool

TOOL_TIMEOUT_SECONDS = 60


def run_tool(name: str, arguments: list[str]) -> subprocess.CompletedProcess:
    command = require_tool(name, "dcmtk")
    return subprocess.run([command, *arguments], env=dcmtk_environ(), capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT_SECONDS)


def key_arguments(keys: dict[str, str]) -> list[str]:
    arguments = []
    for keyword, value in keys.items():
        arguments += ["-k", f"{keyword}={value}" if value is not None else keyword]
    return arguments


def findscu(port: int, calling: str, keys: dict[str, str], output_dir: Path, *options: str, model: str = "-S"):
    """Run findscu with extra `options` and return (result, response identifiers in the order received)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    result = run_tool("findscu", ["-v", *options, model, "-X", "-od", str(output_dir), "-aet", calling,
                                  "-aec", "PACS", *key_arguments(keys), "127.0.0.1", str(port)])
    responses = [dcmread(path) for path in sorted(output_dir.glob("rsp*.dcm"))]
    return result, responses


def getscu(port: int, calling: str, keys: dict[str, str], output_dir: Path) -> subprocess.CompletedProcess:
    output_dir.mkdir(parents=True, exist_ok=True)
    return run_tool("getscu", ["-v", "-S", "+B", "-od", str(output_dir), "-aet", calling, "-aec", "PACS",
                               *key_arguments(keys), "127.0.0.1", str(port)])


def movescu(port: int, calling: str, destination: str, keys: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    return run_tool("movescu", ["-v", *options, "-S", "-aet", calling, "-aec", "PACS", "-aem", destination,
                                *key_arguments(keys), "127.0.0.1", str(port)])


def start_storescp(port: int, ae_title: str, output_dir: Path, log_path: Path, *options: str) -> subprocess.Popen:
    """Start DCMTK storescp with extra `options` and wait until it accepts connections on 127.0.0.1.

    storescp (DCMTK 3.6.7) has no option to bind one address, so it listens on every interface.
    """
    command = require_tool("storescp", "dcmtk")
    output_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [command, "-v", *options, "-aet", ae_title, "+xa", "+B", "-od", str(output_dir), str(port)],
            env=dcmtk_environ(), stdout=log_file, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"storescp did not listen on port {port}:\n{log_path.read_text()}")


@contextmanager
def running_storescp(port: int, ae_title: str, output_dir: Path, log_path: Path, *options: str):
    """Run storescp as in start_storescp for the duration of a `with` block, then stop it."""
    process = start_storescp(port, ae_title, output_dir, log_path, *options)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def dataset_bytes(path: Path) -> bytes:
    """Return the data set of a Part 10 file without its preamble and File Meta Information."""
    from pynetdicom.dsutils import split_dataset

    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def response_values(responses: list[Dataset], keyword: str) -> list[str]:
    return [str(response.get(keyword, "")) for response in responses]


def final_move_response(debug_output: str) -> dict[str, str]:
    """Return the fields of the final C-MOVE response as movescu prints them with -d.

    The keys are DCMTK's labels, such as "DIMSE Status" and "Failed Suboperations". The Failed SOP
    Instance UID List (0008,0058) of a response identifier is under "FailedSOPInstanceUIDList", with
    its values separated by backslashes.
    """
    _, _, final = debug_output.partition("Received Final")
    fields = dict(re.findall(r"^D: ([A-Za-z][A-Za-z ]*?)\s+: (.*)$", final, re.MULTILINE))
    failed_list = re.search(r"^D: \(0008,0058\) UI \[(.*?)\]", final, re.MULTILINE)
    if failed_list is not None:
        fields["FailedSOPInstanceUIDList"] = failed_list.group(1)
    return fields
