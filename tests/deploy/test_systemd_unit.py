"""The shipped service unit (deploy/systemd/cxr-dashboard.service) starts the dashboard where nginx expects it."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "cxr-dashboard.service"
SITE = REPO / "deploy" / "nginx" / "cxr-review.conf"


def service() -> configparser.SectionProxy:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # systemd's keys are case-sensitive
    unit.read_string(UNIT.read_text(encoding="utf-8"))
    return unit["Service"]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_unit_runs_the_readme_command_on_the_proxys_upstream():
    command = shlex.split(service()["ExecStart"])
    assert command[0].endswith("/streamlit") and command[1:3] == ["run", "dashboard"]
    upstream = re.search(r"^\s*server (\S+):(\d+);", SITE.read_text(encoding="utf-8"), re.M)
    assert (option(command, "--server.address"), option(command, "--server.port")) == upstream.groups()
    # `run dashboard` is relative to the working directory
    assert service()["WorkingDirectory"] and service()["Environment"].startswith("CXR_HOME=")
    assert service()["User"] != "root"
