"""Access to external tools: skip a test when one is missing, fail under CI=true."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(command: str, debian_package: str) -> str:
    """Return the path of `command`, or skip (fail in CI) naming the Debian package."""
    path = shutil.which(command)
    if path is None:
        message = f"{command} not found: install the Debian package {debian_package}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def dcmtk_environ() -> dict[str, str]:
    """Environment for DCMTK tools; TCP_NODELAY avoids Debian DCMTK's delay of about 40 ms a message."""
    return {**os.environ, "TCP_NODELAY": "1"}
