"""A file handed to this browser over its own signed-in connection, only when the user asks for it.

Streamlit's download button builds its file when the page renders and serves it at a ``/media/…`` URL that
answers without a cookie. Here the file is built in the click's callback (for the signed-in account, audited),
travels to the browser inside the page's own websocket message, and is saved there from memory: it never sits at
a URL anyone could fetch."""

from __future__ import annotations

import secrets

import streamlit as st

PENDING_KEY = "download_pending"

SCRIPT = """
export default function ({ data }) {
  if (!data || !data.token || window.__cxrDelivered === data.token) return;  // each file once
  window.__cxrDelivered = data.token;
  const url = URL.createObjectURL(new Blob([data.text], { type: data.mime }));
  const link = document.createElement('a');
  link.href = url;
  link.download = data.name;
  link.style.display = 'none';
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
"""

_component = st.components.v2.component("cxr_deliver_file", js=SCRIPT)


def offer(name: str, text: str, mime: str) -> None:
    """Called from a callback: the file goes to the browser in the run that follows."""
    st.session_state[PENDING_KEY] = {"token": secrets.token_hex(8), "name": name, "text": text, "mime": mime}


def deliver_pending() -> None:
    pending = st.session_state.pop(PENDING_KEY, None)
    if pending is not None:
        _component(key=f"cxr_deliver_{pending['token']}", data=pending, height=0)
