"""Plotly charts of the overview and models pages, from the plain dataclasses of ``db``."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from db.agreement import DailyAgreement, VersionAgreement
from db.overview import CONFIDENCE_BINS, DayCount, HistogramBin

_LAYOUT = dict(height=300, margin=dict(l=10, r=10, t=36, b=10))


def daily_volume(days: Sequence[DayCount]) -> go.Figure:
    fig = go.Figure(go.Bar(x=[d.day.isoformat() for d in days], y=[d.count for d in days]))
    fig.update_xaxes(type="category")  # whole days, also when there is only one
    return fig.update_layout(title="Images scored per day", yaxis_title="predictions", **_LAYOUT)


def class_mix(mix: dict[str, int]) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(mix), y=list(mix.values())))
    return fig.update_layout(title="Predicted classes", yaxis_title="images", **_LAYOUT)


def confidence_histogram(bins: Sequence[HistogramBin]) -> go.Figure:
    fig = go.Figure()
    for name in sorted({b.predicted_class for b in bins}):
        own = sorted((b for b in bins if b.predicted_class == name), key=lambda b: b.low)
        fig.add_trace(go.Bar(x=[b.low + 0.5 / CONFIDENCE_BINS for b in own], y=[b.count for b in own], name=name,
                             width=1 / CONFIDENCE_BINS))
    fig.update_layout(title="Confidence per predicted class", barmode="overlay", xaxis_title="confidence",
                      yaxis_title="images", xaxis_range=[0, 1], **_LAYOUT)
    return fig.update_traces(opacity=0.6)


def agreement_over_time(days: Sequence[DailyAgreement]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[d.day.isoformat() for d in days], y=[d.agreed / d.reviewed for d in days],
                               mode="lines+markers", text=[f"{d.agreed} of {d.reviewed}" for d in days]))
    fig.update_xaxes(type="category")
    return fig.update_layout(title="Reviewer–model agreement per day", yaxis_title="share agreeing",
                             yaxis_range=[0, 1], **_LAYOUT)


def confusion_matrix(result: VersionAgreement) -> go.Figure:
    z = [[result.matrix.get((label, predicted), 0) for predicted in result.classes] for label in result.labels]
    fig = go.Figure(go.Heatmap(z=z, x=list(result.classes), y=list(result.labels), colorscale="Blues",
                               text=z, texttemplate="%{text}", showscale=False))
    fig.update_yaxes(autorange="reversed", title="reviewer's label")
    fig.update_xaxes(title="model's prediction", side="top")
    return fig.update_layout(height=80 + 40 * len(result.labels), margin=dict(l=10, r=10, t=60, b=10))
