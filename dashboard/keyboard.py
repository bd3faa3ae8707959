"""The keyboard shortcuts keep working after the mouse is used.

Streamlit ignores a shortcut while an input element has the focus, and a select (a combobox input), a toggle or a
checkbox keeps the focus after a mouse choice: the number keys then typed into the Window box instead of choosing a
label. A click on the image did not release it either (the image's plot swallows the mouse press). This script,
mounted once per page, gives the focus back to the page once a choice is made in a select, a toggle, a checkbox or
a radio, and when the image is pressed; Escape leaves any text box (a comment is then taken, as with Tab).
"""

from __future__ import annotations

import streamlit as st

SCRIPT = """
export default function () {
  if (window.__cxrShortcutsKept) return;  // once per page, however often Streamlit mounts this
  window.__cxrShortcutsKept = true;
  const doc = window.document;
  const NOT_TEXT = ['checkbox', 'radio', 'range', 'button', 'submit', 'reset', 'file', 'color'];
  const isChoice = (el) => el && el.tagName === 'INPUT'
    && (NOT_TEXT.includes(el.type) || el.getAttribute('role') === 'combobox');
  const isText = (el) => el && !isChoice(el)
    && (el.tagName === 'TEXTAREA' || el.tagName === 'INPUT' || el.isContentEditable);
  const releaseChoice = () => setTimeout(() => {
    const el = doc.activeElement;
    if (isChoice(el)) el.blur();
  }, 0);

  doc.addEventListener('change', (event) => { if (isChoice(event.target)) releaseChoice(); }, true);
  doc.addEventListener('click', (event) => {
    if (event.target.closest && event.target.closest('[role="option"]')) releaseChoice();
  }, true);
  doc.addEventListener('keydown', (event) => {
    const el = doc.activeElement;
    if (event.key === 'Escape' && (isText(el) || isChoice(el))) {
      el.blur();
    } else if (event.key === 'Enter' && isChoice(el) && el.getAttribute('aria-expanded') === 'true') {
      releaseChoice();  // an option chosen with the keyboard
    }
  }, true);
  doc.addEventListener('pointerdown', (event) => {
    const onFilm = event.composedPath().some((el) => el.classList && el.classList.contains('cxr-viewer'));
    if (onFilm || (event.target.closest && event.target.closest('[data-testid="stPlotlyChart"]'))) {
      const el = doc.activeElement;
      if (isChoice(el) || isText(el)) el.blur();
    }
  }, true);
}
"""

_component = st.components.v2.component("cxr_keep_shortcuts", js=SCRIPT)


def keep_shortcuts_working() -> None:
    _component(key="cxr_keep_shortcuts", height=0)
