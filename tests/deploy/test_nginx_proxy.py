"""The shipped nginx site (deploy/nginx/cxr-review.conf) in front of the dashboard: TLS only, the security headers
on every response, Streamlit's metrics and agent API closed, the websocket upgraded, the client's address passed on
so that it cannot be forged, and a Content-Security-Policy under which Streamlit's page still works."""

from __future__ import annotations

import base64
import http.client
import os
import re
import socket
import ssl
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dashboard.local_server import serve

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "deploy" / "nginx" / "cxr-review.conf"
STREAMLIT_CONFIG = REPO / "dashboard" / ".streamlit" / "config.toml"
HOST = "cxr.example.org"  # not loopback: Streamlit lets any loopback page open its websocket
FORGED = "203.0.113.66"  # an address from the documentation range, as a hostile client would claim it
TIMEOUT_MS = 60_000

# What Streamlit's page tries and the policy refuses without any loss to the app.
TOLERATED_VIOLATIONS = (
    ("script-src-elem", "inline"),  # Streamlit's window.prerenderReady, for search-engine prerendering
    ("script-src", "wasm-eval"),  # protobuf's long.js probes WebAssembly, then uses plain JavaScript
)
RECORD_VIOLATIONS = """document.addEventListener('securitypolicyviolation', (event) => {
  (window.__cspViolations = window.__cspViolations || []).push([event.effectiveDirective, event.blockedURI]);
});"""

PROBE_APP = """
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

probe = st.components.v2.component("csp_probe", js="export default function () { window.__probeRan = true; }")
probe(key="csp_probe", height=0)
st.plotly_chart(go.Figure(go.Scatter(x=[1, 2, 3], y=[1, 3, 2])))
st.dataframe(pd.DataFrame({"case": [1, 2], "label": ["normal", "covid"]}))
st.write("probe ready")
"""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def tls_context(proxy) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(proxy.certificate.cert))


def fetch(proxy, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
          tls: bool = True) -> Reply:
    """One request, sent as written (no path normalisation, no redirects followed)."""
    if tls:
        connection = http.client.HTTPSConnection("127.0.0.1", proxy.https_port, context=tls_context(proxy),
                                                 timeout=30)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=30)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def upgrade(proxy, *, origin: str | None, extra: tuple[str, ...] = ()) -> str:
    """The status line the proxy answers a websocket upgrade of /_stcore/stream with (raw HTTP/1.1 over TLS), asked
    for as a browser at https://HOST:PORT would, HOST being the site file's server_name."""
    lines = ["GET /_stcore/stream HTTP/1.1", f"Host: {HOST}:{proxy.https_port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
             "Sec-WebSocket-Version: 13", *([f"Origin: {origin}"] if origin else []), *extra]
    with socket.create_connection(("127.0.0.1", proxy.https_port), timeout=30) as raw, \
            tls_context(proxy).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head and (chunk := sock.recv(4096)):
            head += chunk
    return head.split(b"\r\n", 1)[0].decode()


def assert_security_headers(reply: Reply, what: str) -> None:
    headers = reply.headers
    for name in ("X-Frame-Options", "Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy",
                 "Strict-Transport-Security", "Permissions-Policy"):
        assert len(headers.get_all(name) or []) == 1, f"{what}: {name} is {headers.get_all(name)}"
    assert headers["X-Frame-Options"] == "DENY", what
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], what
    assert headers["X-Content-Type-Options"] == "nosniff", what
    assert headers["Referrer-Policy"] == "no-referrer", what
    max_age = re.match(r"max-age=(\d+)", headers["Strict-Transport-Security"])
    assert max_age and int(max_age.group(1)) >= 365 * 24 * 3600, f"{what}: {headers['Strict-Transport-Security']}"
    assert "camera=()" in headers["Permissions-Policy"], what
    assert headers["Server"] == "nginx", f"{what}: the server announces {headers['Server']}"


def test_the_site_file_agrees_with_the_app():
    site = SITE.read_text(encoding="utf-8")
    upload_mb = tomllib.loads(STREAMLIT_CONFIG.read_text(encoding="utf-8"))["server"]["maxUploadSize"]
    # Streamlit itself accepts the file plus 1 MB of multipart envelope (starlette_routes.py)
    assert re.findall(r"^\s*client_max_body_size (\S+);", site, re.M) == [f"{upload_mb + 1}m"]
    assert re.findall(r"^\s*ssl_protocols (.+);", site, re.M) == ["TLSv1.2 TLSv1.3"]
    assert re.findall(r"^\s*server (\S+);", site, re.M) == ["127.0.0.1:8501"]
    headers = re.findall(r"^\s*add_header .*$", site, re.M)
    assert len(headers) == 6 and all(line.endswith(" always;") for line in headers), headers
    for location in re.findall(r"^\s*location [^{]*\{[^}]*\}", site, re.M):
        # an add_header in a location would drop every server-level header there
        assert "add_header" not in location, location


@pytest.mark.slow
def test_pages_answer_through_the_proxy_with_every_security_header(site):
    for path in ("/", "/case?image=1", "/_stcore/health"):
        reply = fetch(site, path)
        assert reply.status == 200, f"{path}: {reply.status}"
        assert_security_headers(reply, path)
    assert b"<title>" in fetch(site, "/").body
    assert fetch(site, "/_stcore/health").body == b"ok"


@pytest.mark.slow
def test_metrics_and_agent_api_are_closed(site, dashboard):
    import urllib.request

    with urllib.request.urlopen(f"{dashboard}/_stcore/metrics", timeout=30) as direct:
        assert b"session_events" in direct.read()  # the app itself does answer: the proxy is what closes it
    for method, path in [("GET", "/_stcore/metrics"), ("GET", "/_stcore/metrics?families=session_events"),
                         ("GET", "//_stcore/metrics"), ("GET", "/_stcore/%6Detrics"), ("OPTIONS", "/_stcore/metrics"),
                         ("GET", "/_stcore/agent/openapi.json"), ("POST", "/_stcore/agent/interact"),
                         ("POST", "/_stcore/agent/mcp")]:
        reply = fetch(site, path, method=method, headers={"Content-Type": "application/json"})
        assert reply.status in (403, 404), f"{method} {path}: {reply.status} {reply.body[:200]!r}"
        assert b"session_events" not in reply.body and b"openapi" not in reply.body, f"{method} {path}"
        assert_security_headers(reply, f"{method} {path}")


@pytest.mark.slow
def test_plain_http_only_redirects_to_https(site):
    for method in ("GET", "POST"):
        reply = fetch(site, "/case?image=3", method=method, tls=False)
        assert reply.status == 301, f"{method}: {reply.status}"
        assert reply.headers["Location"] == "https://127.0.0.1/case?image=3"


@pytest.mark.slow
def test_the_websocket_upgrades_through_the_proxy(site):
    # Streamlit accepts its own page's websocket: the proxy passed on the host the browser used, port included
    assert upgrade(site, origin=f"https://{HOST}:{site.https_port}") == "HTTP/1.1 101 Switching Protocols"
    assert upgrade(site, origin="https://evil.example").startswith("HTTP/1.1 403")  # and refuses other sites'
    assert upgrade(site, origin=None) == "HTTP/1.1 101 Switching Protocols"  # as it does for a non-browser


class RecordingUpstream(ThreadingHTTPServer):
    """A stand-in for the dashboard that records the headers of every request it receives."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        self.received: list[list[tuple[str, str]]] = []


class RecordingHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.received.append(list(self.headers.items()))
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
        else:
            self.send_response(200)
            self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def recording_upstream() -> Iterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        upstream.shutdown()
        upstream.server_close()


@pytest.mark.slow
def test_the_client_cannot_forge_its_address(proxy_to, recording_upstream):
    forged = {"X-Real-IP": FORGED, "X-Forwarded-For": FORGED, "X_Real_IP": FORGED}
    with proxy_to(recording_upstream.server_address[1]) as proxy:
        assert fetch(proxy, "/", headers=forged).status == 200
        status = upgrade(proxy, origin=None, extra=tuple(f"{name}: {value}" for name, value in forged.items()))
        assert status == "HTTP/1.1 101 Switching Protocols"
    assert len(recording_upstream.received) == 2  # the page, then the websocket, where the dashboard reads it
    for headers in recording_upstream.received:
        assert values_of(headers, "X-Real-IP") == ["127.0.0.1"], headers
        assert values_of(headers, "X-Forwarded-For") == ["127.0.0.1"], headers
        assert not any(FORGED in value for _, value in headers), headers


def values_of(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


def csp_violations(page) -> list[tuple[str, str]]:
    """What the page's Content-Security-Policy refused, less what Streamlit tries without needing it."""
    found = page.evaluate("window.__cspViolations || []")
    return [(directive, blocked) for directive, blocked in found
            if not any(directive == allowed and blocked.startswith(prefix)
                       for allowed, prefix in TOLERATED_VIOLATIONS)]


def new_page(browser):
    # The browser trusts nothing about the test's self-signed certificate: unverified, on purpose (loopback only).
    page = browser.new_context(ignore_https_errors=True).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.add_init_script(RECORD_VIOLATIONS)
    return page


@pytest.mark.slow
def test_the_sign_in_page_works_under_the_proxys_policy(site, browser):
    page = new_page(browser)
    page.goto(f"{site.origin}/")
    page.get_by_role("button", name="Sign in").wait_for()
    page.get_by_label("User name").fill("nobody")  # the page is live, not just drawn
    page.wait_for_timeout(1000)
    assert csp_violations(page) == []


@pytest.mark.slow
def test_streamlits_components_charts_and_tables_work_under_the_proxys_policy(proxy_to, browser, dashboard_env,
                                                                             tmp_path):
    app = tmp_path / "probe.py"
    app.write_text(PROBE_APP, encoding="utf-8")
    (tmp_path / ".streamlit").mkdir()  # the dashboard's settings beside the probe, as beside the dashboard's script
    (tmp_path / ".streamlit" / "config.toml").write_bytes(STREAMLIT_CONFIG.read_bytes())
    with serve(dashboard_env, app=str(app)) as base, proxy_to(int(base.rsplit(":", 1)[1])) as proxy:
        page = new_page(browser)
        page.goto(f"{proxy.origin}/")
        page.get_by_text("probe ready").wait_for()
        # a component's code, loaded from a blob: URL (polled from outside the page: wait_for_function would
        # evaluate a string inside it, which the policy rightly forbids)
        deadline = time.monotonic() + 30
        while not page.evaluate("window.__probeRan === true"):
            assert time.monotonic() < deadline, "the component's code never ran under the policy"
            page.wait_for_timeout(100)
        page.locator(".js-plotly-plot").wait_for()
        page.locator("[data-testid='stDataFrame'] canvas").first.wait_for()
        page.wait_for_timeout(1000)
        assert csp_violations(page) == []
