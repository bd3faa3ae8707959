"""The Streamlit settings in dashboard/.streamlit/config.toml, and the README's ``streamlit run dashboard`` keeping
to them: the dashboard listens on this machine only, and the proxy (deploy/nginx) is the way in for everyone else."""

from __future__ import annotations

import socket
import sys
import tomllib
from pathlib import Path

import pytest

from dashboard.local_server import serve

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "dashboard" / ".streamlit" / "config.toml"
LISTEN = "0A"  # a socket's state in /proc/net/tcp


def settings() -> dict[str, object]:
    """``section.option`` -> value, as Streamlit names its options."""
    parsed = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    return {f"{section}.{name}": value for section, options in parsed.items() for name, value in options.items()}


def test_the_settings_that_keep_the_dashboard_closed():
    assert settings().items() >= {
        "server.address": "127.0.0.1",
        "server.enableAgentApi": False,
        "server.enableXsrfProtection": True,
        "server.maxUploadSize": 10,
        "client.showErrorDetails": "none",
        "client.disableDataExport": True,
        "client.toolbarMode": "minimal",
        "browser.gatherUsageStats": False,
    }.items()


def test_every_setting_is_an_option_streamlit_knows():
    from streamlit import config

    # Streamlit ignores a misspelt option: the setting would silently not apply
    assert sorted(set(settings()) - set(config.get_config_options())) == []


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (Linux: /proc/net/tcp and /proc/net/tcp6)."""
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == LISTEN and int(hex_port, 16) == port:
                found.add(socket.inet_ntop(family, kernel_address(address)))
    return found


def kernel_address(hex_address: str) -> bytes:
    """The kernel writes an address as 32-bit words in the machine's byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "big":
        return raw
    return b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))


@pytest.mark.slow
@pytest.mark.parametrize("from_elsewhere", [False, True], ids=["from the repository root", "from another folder"])
def test_streamlit_run_dashboard_listens_on_this_machine_only(dashboard_env, tmp_path, from_elsewhere):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to read the listening socket from (not Linux)")
    env = {name: value for name, value in dashboard_env.items() if not name.startswith("STREAMLIT_")}
    where = dict(app=str(REPO / "dashboard"), cwd=tmp_path) if from_elsewhere else dict(app="dashboard")
    with serve(env, address=None, **where) as base:  # the README's way: no --server.address
        assert listening_addresses(int(base.rsplit(":", 1)[1])) == {"127.0.0.1"}
