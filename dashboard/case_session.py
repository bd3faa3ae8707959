"""A reader's unsaved work, case by case: the label, flag, comment and second-reading choice entered on a case,
whether an overlay was on screen, and how long the case has been on screen.

Everything lives under the case's id, so nothing entered on one case can reach another: a case opened by any
route (S, N, P, the worklist, a link, Back) starts clean or with its own unsaved draft. The clock counts the
time a case is on screen over all its visits, so N then P neither resets it nor counts the time spent elsewhere.
Plain Python (no Streamlit): the page keeps one ``ReadingSession`` in its session state.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from db.claims import ClaimResult

MAX_DRAFTS = 50  # a reader's open drafts; the oldest unsaved one is forgotten beyond this


@dataclass
class CaseDraft:
    image_id: int
    label: str | None = None
    flagged: bool = False
    comment: str = ""
    second_reading: bool = False
    overlay_seen: bool = False
    seconds_before: float = 0.0  # on screen in earlier visits
    visit_started: float | None = None  # monotonic time the current visit began; None while not on screen
    claim: ClaimResult | None = None  # held during a visit, released when the case is left

    def seconds_spent(self, now: float) -> float:
        current = now - self.visit_started if self.visit_started is not None else 0.0
        return self.seconds_before + max(0.0, current)

    def choose(self, label: str, predicted: str | None) -> None:
        """A label; the flag follows disagreement with the model's prediction (the reader may untick it)."""
        self.label = label
        self.flagged = predicted is not None and label != predicted


@dataclass
class ReadingSession:
    drafts: OrderedDict[int, CaseDraft] = field(default_factory=OrderedDict)
    current: int | None = None  # the case on screen, if any

    def open(self, image_id: int, now: float) -> tuple[CaseDraft, int | None]:
        """The case on screen now; also returns the case that was left for it (its claim is to be released)."""
        left = None
        if self.current != image_id:
            left = self.leave(now)
            self.current = image_id
        draft = self.drafts.get(image_id)
        if draft is None:
            draft = self.drafts[image_id] = CaseDraft(image_id)
            self._forget_oldest()
        if draft.visit_started is None:
            draft.visit_started = now
        return draft, left

    def leave(self, now: float) -> int | None:
        """No case on screen any more (another page is shown); returns the case that was left, if any."""
        left, self.current = self.current, None
        draft = self.drafts.get(left) if left is not None else None
        if draft is not None and draft.visit_started is not None:
            draft.seconds_before = draft.seconds_spent(now)
            draft.visit_started = None
        if draft is not None:
            draft.claim = None
        return left

    def saved(self, image_id: int) -> None:
        """The reading is stored: the draft is done with."""
        self.drafts.pop(image_id, None)

    def _forget_oldest(self) -> None:
        while len(self.drafts) > MAX_DRAFTS:
            oldest = next(iter(self.drafts))
            if oldest == self.current:
                self.drafts.move_to_end(oldest)
                continue
            del self.drafts[oldest]
