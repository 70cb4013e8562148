"""The faithfulness-vs-size curve of the Circuit view: Pearson of the circuit alone against the
full model, per circuit size, next to random circuits of the same sizes (a pure figure builder)."""

from __future__ import annotations

from typing import Optional

import plotly.graph_objects as go

CIRCUIT_COLOUR = "#222222"
RANDOM_COLOUR = "#8c8c8c"


def faith_curve_figure(curve: dict, current_edges: Optional[int], total_edges: int, where: str) -> go.Figure:
    """Lines over % of kernels (log axis): the circuit's Pearson, the random circuits' mean and best;
    a dotted line at the current circuit's size. ``where``: what the images are (said in the title)."""
    pct = [100 * e / max(total_edges, 1) for e in curve["edges"]]
    hover = [f"{e} kernels ({p:.2g}%)" for e, p in zip(curve["edges"], pct)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=pct, y=curve["pearson"], mode="lines+markers", name="circuit alone",
                             line=dict(color=CIRCUIT_COLOUR, width=2), text=hover,
                             hovertemplate="%{text}<br>Pearson %{y:.2f}<extra>circuit</extra>"))
    fig.add_trace(go.Scatter(x=pct, y=curve["random_pearson"], mode="lines+markers",
                             name=f"random, mean of {curve.get('random_circuits', '?')}",
                             line=dict(color=RANDOM_COLOUR, width=1.5, dash="dash"), text=hover,
                             hovertemplate="%{text}<br>Pearson %{y:.2f}<extra>random mean</extra>"))
    fig.add_trace(go.Scatter(x=pct, y=curve["random_pearson_best"], mode="markers", name="random, best",
                             marker=dict(color=RANDOM_COLOUR, symbol="triangle-up", size=7), text=hover,
                             hovertemplate="%{text}<br>Pearson %{y:.2f}<extra>random best</extra>"))
    if current_edges:
        x = 100 * current_edges / max(total_edges, 1)
        fig.add_vline(x=x, line=dict(color="#b2182b", dash="dot", width=1))
        fig.add_annotation(x=x, y=1.0, yref="paper", text=f"this circuit ({current_edges} kernels)", showarrow=False,
                           xanchor="left", yanchor="top", font=dict(size=10, color="#b2182b"))
    fig.update_layout(
        title=dict(text=f"Faithfulness vs size: Pearson of the target value, circuit alone vs full model<br>"
                        f"<sub>{where}; the circuit at each size is the top kernels of the current scores</sub>",
                   font=dict(size=12)),
        xaxis=dict(title="% of all kernels kept (log scale)", type="log"),
        yaxis=dict(title="Pearson", range=[-0.25, 1.05], zeroline=True),
        height=300, margin=dict(l=50, r=10, t=60, b=40), legend=dict(orientation="h", y=-0.3),
        plot_bgcolor="white")
    fig.update_xaxes(gridcolor="#eee")
    fig.update_yaxes(gridcolor="#eee")
    return fig
