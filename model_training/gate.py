"""The promotion gate: a retrained version reaches the scorer only when the site's own new cases show it is better.

The rule (the README quotes it):

- a first promotion (no version active, or only the synthetic demo model, whose output means nothing to compare
  with) and a rollback (to a version that was active before) are not gated;
- any other version must have been scored in the shadow as a challenger, and on the prospective evidence
  (:func:`db.evidence.prospective_cases`: cases read after it was trained that neither version trained on, nor
  on a film of the same patient) there must be at least ``MIN_CASES`` cases with at least ``MIN_PER_CLASS``
  patients in two classes or more, and, with paired bootstrap intervals resampled by patient:
  - the lower end of the 95 % interval of (challenger − active) balanced accuracy above 0 (it is better), and
  - the lower end of the 95 % interval of (challenger − active) macro-AUROC above −``AUROC_MARGIN`` (its
    ranking is not worse by more than the margin),
  both over the classes with at least ``MIN_PER_CLASS`` patients only: a class with fewer would weigh as much as
  any other on the strength of a film or two, and its recall would be the same in every class-stratified
  resample (no variance), so it is left out of both, and the comparison says so.

Anything else is refused; an admin may promote anyway with a reason, which goes to the audit trail.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session

from db import events, evidence, model_versions
from db.models import ModelVersion
from model_training import metrics

MIN_CASES = 30  # fewer cannot make a paired interval on balanced accuracy narrow enough to mean anything
MIN_PER_CLASS = metrics.MIN_PATIENTS_PER_CLASS  # patients of a class for it to count: see metrics
AUROC_MARGIN = 0.05  # how much worse a challenger may rank (macro-AUROC) and still pass, at the interval's low end
DEFAULT_RESAMPLES = 1000

FIRST_PROMOTION = "first promotion"
ROLLBACK = "rollback"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Comparison:
    """The active version and a challenger, paired on the same prospective cases."""

    champion_id: int
    challenger_id: int
    classes: tuple[str, ...]
    cases: int
    per_class: dict[str, int]
    patients: int
    without_patient_id: int = 0  # cases whose film has no pseudonym (PNG/JPEG): each counts as its own patient
    patients_per_class: dict[str, int] = field(default_factory=dict)
    champion: dict[str, float | None] = field(default_factory=dict)
    challenger: dict[str, float | None] = field(default_factory=dict)
    difference: dict[str, metrics.Interval] = field(default_factory=dict)  # challenger − champion, paired

    @property
    def judged(self) -> tuple[str, ...]:
        """The classes balanced accuracy and macro-AUROC are taken over: those with ``MIN_PER_CLASS`` patients."""
        return tuple(name for name in self.classes if self.patients_per_class.get(name, 0) >= MIN_PER_CLASS)

    @property
    def left_out(self) -> dict[str, int]:
        """The classes present with too few patients to count, and how many patients they have."""
        return {name: n for name, n in self.patients_per_class.items() if 0 < n < MIN_PER_CLASS}

    @property
    def more_cases_needed(self) -> int | None:
        """Roughly how many more reviewed cases the balanced-accuracy interval needs to exclude zero, if the
        difference holds (an interval narrows as one over the square root of the cases); 0 when it already does,
        None when the challenger is not ahead (more cases will not make it pass)."""
        found = self.difference.get("balanced_accuracy")
        if found is None or found.estimate is None or found.low is None:
            return None
        if found.low > 0:
            return 0
        if found.estimate <= 0:
            return None
        half_width = (found.high - found.low) / 2
        return max(0, math.ceil(self.cases * (half_width / found.estimate) ** 2) - self.cases)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    kind: str  # FIRST_PROMOTION, ROLLBACK or CHALLENGER
    reason: str
    comparison: Comparison | None = None


def decide(session: Session, version: ModelVersion, *, resamples: int = DEFAULT_RESAMPLES) -> Decision:
    """Whether promoting ``version`` passes the gate, and why."""
    active = model_versions.active_version(session)
    if active is None:
        return Decision(True, FIRST_PROMOTION, "no version is active: a first promotion is not gated")
    if active.is_synthetic and not version.is_synthetic:
        return Decision(True, FIRST_PROMOTION, "the active version is the synthetic demo model: replacing it with "
                                               "a model trained on films is a first promotion, not gated")
    if version.id == active.id:
        return Decision(True, ROLLBACK, "it is the active version already")
    if version.first_active_at is not None:
        return Decision(True, ROLLBACK, "it was active before: a rollback is not gated")
    if list(version.classes) != list(active.classes):
        return Decision(False, CHALLENGER, f"its classes ({', '.join(version.classes)}) differ from the active "
                                           f"version's ({', '.join(active.classes)}): the gate cannot compare them")
    comparison = compare(session, active, version, resamples=resamples)
    return Decision(*_judge(comparison, version), comparison=comparison)


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    version_id: int
    previous_id: int | None
    decision: Decision
    overridden: bool = False


def promote(session: Session, ref: str, *, by: str, reviewer_id: int | None = None,
            override_reason: str | None = None, via: str, resamples: int = DEFAULT_RESAMPLES) -> Promotion:
    """Promote ``ref`` if the gate allows it, or anyway with ``override_reason`` (recorded with the gate's own
    reason); every promotion is an audit event. Nothing changes when the gate refuses and there is no reason."""
    version = model_versions.find_by_ref(session, ref)
    decision = decide(session, version, resamples=resamples)
    reason = (override_reason or "").strip()
    if not decision.allowed and not reason:
        return Promotion(False, version.id, None, decision)
    promoted, previous = model_versions.promote(session, str(version.id))
    details = {"version": promoted.id, "previous": previous.id if previous else None, "from": via,
               "gate": decision.kind, "gate_passed": decision.allowed}
    events.record(session, events.PROMOTE, username=by, reviewer_id=reviewer_id, details=details)
    if not decision.allowed:
        events.record(session, events.PROMOTE_OVERRIDE, username=by, reviewer_id=reviewer_id,
                      details={**details, "reason": reason[:1000], "gate_reason": decision.reason,
                               "cases": decision.comparison.cases if decision.comparison else 0})
    return Promotion(True, promoted.id, previous.id if previous else None, decision, overridden=not decision.allowed)


def compare(session: Session, champion: ModelVersion, challenger: ModelVersion, *,
            resamples: int = DEFAULT_RESAMPLES) -> Comparison:
    classes = tuple(challenger.classes)
    cases = evidence.prospective_cases(session, champion, challenger)
    per_class = {name: sum(case.label == name for case in cases) for name in classes}
    y = np.array([classes.index(case.label) for case in cases], dtype=np.int64)
    groups = [case.patient or f"image {case.image_id}" for case in cases]
    base = Comparison(champion.id, challenger.id, classes, len(cases), per_class, len(set(groups)),
                      sum(case.patient is None for case in cases), metrics.patients_per_class(y, groups, classes))
    if len(set(y.tolist())) < 2 or len(base.judged) < 2:
        return base  # balanced accuracy and AUROC over fewer than two classes would judge nothing
    champion_p = _matrix([case.champion for case in cases], classes)
    challenger_p = _matrix([case.challenger for case in cases], classes)
    stats = statistics(classes, base.judged)
    imprecise = {name for name, depends in _statistic_classes(classes).items() if set(depends) & set(base.left_out)}
    difference = {}
    for name, stat in stats.items():
        found = metrics.paired_bootstrap_difference(stat, y, champion_p, challenger_p, groups, n_resamples=resamples)
        difference[name] = _estimate_only(found) if name in imprecise else found
    return dataclasses.replace(base, champion={name: stat(y, champion_p) for name, stat in stats.items()},
                               challenger={name: stat(y, challenger_p) for name, stat in stats.items()},
                               difference=difference)


def statistics(classes: tuple[str, ...], judged: tuple[str, ...] | None = None) -> dict[str, metrics.Statistic]:
    """What the comparison shows: balanced accuracy and macro-AUROC (over the ``judged`` classes; all where not
    given), per-class recall, one-vs-rest and pairwise AUROC, and the expected calibration error."""
    among = [classes.index(name) for name in (classes if judged is None else judged)]
    headline = metrics.headline_statistics(classes)
    stats: dict[str, metrics.Statistic] = {"balanced_accuracy": lambda y, p: metrics.balanced_accuracy(y, p, among)}
    for c, name in enumerate(classes):
        stats[f"recall_{name}"] = _recall(c)
    stats["macro_auroc"] = lambda y, p: metrics.macro_auroc(y, p, among)
    stats.update({name: stat for name, stat in headline.items() if name.startswith("auroc")})
    stats["ece"] = lambda y, p: metrics.expected_calibration_error(p, y)
    return stats


def _statistic_classes(classes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The classes each per-class figure of :func:`statistics` is about (balanced accuracy and macro-AUROC are
    over the judged classes only)."""
    about = {name: depends for name, depends in metrics.statistic_classes(classes).items()
             if name not in ("balanced_accuracy", "macro_auroc")}
    return {**about, **{f"recall_{name}": (name,) for name in classes}}


def _estimate_only(found: metrics.Interval) -> metrics.Interval:
    return dataclasses.replace(found, low=None, high=None)


def _recall(c: int) -> metrics.Statistic:
    def recall(y: np.ndarray, p: np.ndarray) -> float | None:
        return float((p[y == c].argmax(axis=1) == c).mean()) if (y == c).any() else None
    return recall


def _judge(comparison: Comparison, version: ModelVersion) -> tuple[bool, str, str]:
    shown = model_versions.label(version)
    if comparison.cases < MIN_CASES:
        return False, CHALLENGER, (f"{comparison.cases} prospective reviewed case(s) judge {shown}; the gate needs "
                                   f"at least {MIN_CASES} (score it as a challenger, `cxr-train challenge`, and "
                                   "review new cases)")
    if len(comparison.judged) < 2:
        return False, CHALLENGER, (f"the prospective cases hold fewer than {MIN_PER_CLASS} patients of every class "
                                   f"but one (patients: {_counts(comparison.patients_per_class)}); a class with "
                                   "fewer cannot carry the decision")
    balanced, auroc = comparison.difference["balanced_accuracy"], comparison.difference["macro_auroc"]
    over = _judged_text(comparison)
    if balanced.low is None or not balanced.low > 0:
        return False, CHALLENGER, (f"its balanced accuracy is not shown better: {_interval(balanced)} "
                                   f"(the interval's low end must be above 0), {over}")
    if auroc.low is None or not auroc.low > -AUROC_MARGIN:
        return False, CHALLENGER, (f"its ranking may be worse: macro-AUROC {_interval(auroc)} (the interval's low "
                                   f"end must be above −{AUROC_MARGIN:g}), {over}")
    return True, CHALLENGER, (f"balanced accuracy {_interval(balanced)} and macro-AUROC {_interval(auroc)} on "
                              f"{comparison.cases} prospective cases pass the gate, {over}")


def _judged_text(comparison: Comparison) -> str:
    """Which classes the decision rests on, and which were left out and why."""
    text = f"over {', '.join(comparison.judged)}"
    if comparison.left_out:
        text += (f" ({_counts(comparison.left_out, 'patient(s)')} left out: fewer than {MIN_PER_CLASS} patients, "
                 "too few to weigh as a class)")
    return text


def comparison_rows(comparison: Comparison) -> list[dict[str, str]]:
    """The comparison as table rows (for the CLI and the dashboard)."""
    rows = []
    for name, found in comparison.difference.items():
        shown = _interval(found)
        if found.estimate is not None and found.low is None:
            shown += " (too few patients for an interval)"
        rows.append({"metric": name, "active": _number(comparison.champion.get(name)),
                     "challenger": _number(comparison.challenger.get(name)),
                     "challenger − active (95 % CI)": shown})
    return rows


def comparison_text(comparison: Comparison) -> str:
    head = (f"prospective cases: {comparison.cases} ({_counts(comparison.per_class)}), {comparison.patients} "
            f"patients ({comparison.without_patient_id} case(s) without a patient id, each its own patient); "
            f"active = version {comparison.champion_id}, challenger = version {comparison.challenger_id}")
    if comparison.left_out:
        head += (f"\nleft out of balanced accuracy and macro-AUROC: {_counts(comparison.left_out, 'patient(s)')} "
                 f"(fewer than {MIN_PER_CLASS} patients)")
    more = comparison.more_cases_needed
    if more:
        head += f"\nroughly {more} more reviewed cases before the balanced-accuracy interval can exclude 0 " \
                "(if the difference holds)"
    rows = comparison_rows(comparison)
    if not rows:
        return head
    widths = {key: max(len(key), *(len(row[key]) for row in rows)) for key in rows[0]}
    lines = ["  ".join(key.ljust(widths[key]) for key in widths)]
    lines += ["  ".join(row[key].ljust(widths[key]) for key in widths) for row in rows]
    return head + "\n" + "\n".join(lines)


def _matrix(probabilities: list[dict[str, float]], classes: tuple[str, ...]) -> np.ndarray:
    return np.array([[float(p.get(name, 0.0)) for name in classes] for p in probabilities], dtype=np.float64)


def _counts(per_class: dict[str, int], unit: str = "") -> str:
    return ", ".join(f"{name} {count}{' ' + unit if unit else ''}" for name, count in per_class.items())


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _interval(found: metrics.Interval) -> str:
    if found.estimate is None:
        return "—"
    if found.low is None:
        return f"{found.estimate:+.3f}"
    return f"{found.estimate:+.3f} [{found.low:+.3f}, {found.high:+.3f}]"
