"""Snapshots: a versioned JSON of one view (model, settings, circuit nodes, edges and scores) that
reopens it, and a standalone HTML file that shows the 3D circuit and its node panels offline.

``write_snapshot_html`` is shared with ``viscnn circuit ... --out FILE.html``.
"""

from __future__ import annotations

import datetime
import json
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from viscnn.errors import ViscnnError

FORMAT = "viscnn.snapshot"
VERSION = 1
MAX_SNAPSHOT_BYTES = 5 * 1024 * 1024
HTML_MAX_PANEL_NODES = 300
HTML_MAX_EDGES = 3000


def _full(scores, idx: np.ndarray, n: int) -> Optional[np.ndarray]:
    """Scores as a full-length array, from either a full array or one aligned with ``idx``."""
    if scores is None:
        return None
    s = np.asarray(scores, np.float64).reshape(-1)
    if len(s) == n:
        return s
    if len(s) == len(idx):
        out = np.zeros(n, np.float64)
        out[idx] = s
        return out
    raise ViscnnError(f"scores of length {len(s)} fit neither the graph ({n}) nor the circuit ({len(idx)})")


def snapshot_dict(model: str, settings: dict, graph, nodes: Sequence[int], edges: Sequence[int],
                  node_scores, edge_scores) -> dict:
    """The JSON-ready snapshot; nodes by id, edges as [layer, out, in] with their global index."""
    nodes = np.asarray(nodes, np.int64)
    edges = np.asarray(edges, np.int64)
    ns = _full(node_scores, nodes, graph.num_nodes)
    es = _full(edge_scores, edges, graph.num_edges)
    return {
        "format": FORMAT, "version": VERSION, "model": model,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in settings.items() if k != "model"},
        "circuit": {
            "nodes": [graph.node_id(int(n)) for n in nodes],
            "node_scores": [round(float(ns[n]), 7) for n in nodes] if ns is not None else None,
            "edges": [[graph.layers[int(graph.edges[e, 0])].name, int(graph.edges[e, 1]), int(graph.edges[e, 2])]
                      for e in edges],
            "edge_index": [int(e) for e in edges],
            "edge_scores": [round(float(es[e]), 7) for e in edges] if es is not None else None,
        },
    }


def parse_snapshot(data: bytes) -> dict:
    """Validate a snapshot file's bytes; raises ViscnnError with the specific problem."""
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise ViscnnError(f"snapshot is larger than {MAX_SNAPSHOT_BYTES // (1024 * 1024)} MB")
    try:
        d = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ViscnnError(f"snapshot is not valid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ViscnnError("not a viscnn snapshot (missing \"format\": \"viscnn.snapshot\")")
    if d.get("version") != VERSION:
        raise ViscnnError(f"snapshot version {d.get('version')!r} is not supported (this viscnn reads {VERSION})")
    if not isinstance(d.get("model"), str) or not d["model"]:
        raise ViscnnError("snapshot has no model name")
    if not isinstance(d.get("settings"), dict):
        raise ViscnnError("snapshot has no settings object")
    c = d.get("circuit")
    if not isinstance(c, dict) or not isinstance(c.get("nodes"), list) or not isinstance(c.get("edges"), list):
        raise ViscnnError("snapshot has no circuit nodes and edges")
    return d


def snapshot_search(d: dict) -> str:
    """The app URL query that reopens a parsed snapshot."""
    from viscnn.app import state as st

    s = dict(d["settings"])
    s["model"] = d["model"]
    s.setdefault("ablate", [])
    if not isinstance(s.get("ablate"), list):
        s["ablate"] = []
    return st.encode(s)


def check_circuit(d: dict, graph, nodes: Sequence[int], edges: Sequence[int]) -> Optional[str]:
    """None when the recomputed circuit equals the snapshot's, else a message saying how they differ."""
    want_n = set(d["circuit"]["nodes"])
    want_e = set(d["circuit"].get("edge_index") or [])
    got_n = {graph.node_id(int(n)) for n in nodes}
    got_e = {int(e) for e in edges}
    if want_n == got_n and want_e == got_e:
        return None
    return (f"note: the circuit recomputed now differs from the snapshot's ({len(got_n)} vs {len(want_n)} nodes, "
            f"{len(got_e)} vs {len(want_e)} edges); the model or its prepped scores changed since it was saved")


# -- standalone HTML -------------------------------------------------------------------------------
def _uri(arr) -> Optional[str]:
    from viscnn.app.figures.panels import data_uri, png_bytes

    return None if arr is None else data_uri(png_bytes(np.asarray(arr, np.uint8)))


def snapshot_html(graph, nodes: Sequence[int], edges: Sequence[int], node_scores, edge_scores, *,
                  positions: Optional[np.ndarray] = None, featurevis: Optional[Callable[[int], Optional[np.ndarray]]] = None,
                  exemplars: Optional[Callable[[int], List[np.ndarray]]] = None,
                  kernel: Optional[Callable[[int], np.ndarray]] = None, snapshot: Optional[dict] = None,
                  title: str = "viscnn circuit") -> str:
    """One self-contained HTML page (plotly.js inlined, images as data URIs, no network access)."""
    from plotly.offline import get_plotlyjs

    from viscnn.app.figures import graph3d
    from viscnn.app.figures.panels import kernel_rgb, top_incoming

    nodes = np.asarray(nodes, np.int64)
    edges = np.asarray(edges, np.int64)
    ns = _full(node_scores, nodes, graph.num_nodes)
    es = _full(edge_scores, edges, graph.num_edges)
    ns = ns if ns is not None else np.zeros(graph.num_nodes)
    es = es if es is not None else np.zeros(graph.num_edges)
    if positions is None:
        from viscnn.app.context import grid_layout

        positions = graph3d.node_positions(graph, grid_layout(graph))
    drawn = graph3d.select_drawn(edges, es, HTML_MAX_EDGES, graph=graph)
    fig = graph3d.graph_figure(graph, positions, nodes, drawn, ns, es)
    # the page's graph panel is narrower than the app's (3/5 of the window, full height): a camera a little
    # farther back keeps the first and last layer's names inside it
    cam = fig["layout"]["scene"]["camera"]
    cam["eye"] = {k: round(v * 1.2, 3) for k, v in cam["eye"].items()}
    in_circuit = np.zeros(graph.num_edges, bool)
    in_circuit[edges] = True
    es_c = np.where(in_circuit, es, 0.0)
    panel_nodes = nodes[np.argsort(-np.abs(ns[nodes]), kind="stable")[:HTML_MAX_PANEL_NODES]]
    panels: Dict[int, dict] = {}
    for n in panel_nodes:
        n = int(n)
        inc = [e for e in top_incoming(graph, n, es_c, 5) if in_circuit[e]]
        rows = []
        for e in inc:
            src = int(graph.links[np.searchsorted(graph.links[:, 0], e), 1])
            rows.append({"edge": e, "source": graph.node_id(src), "score": float(es[e]),
                         "kernel": _uri(kernel_rgb(kernel(e), upscale=8)) if kernel else None,
                         "source_fv": _uri(featurevis(src)) if featurevis else None})
        panels[n] = {"id": graph.node_id(n), "score": float(ns[n]),
                     "fv": _uri(featurevis(n)) if featurevis else None,
                     "exemplars": [_uri(x) for x in (exemplars(n) if exemplars else [])], "incoming": rows}
    payload = {"figure": fig, "panels": panels, "snapshot": snapshot,
               "summary": f"{len(nodes)} nodes, {len(edges)} edges ({len(drawn)} drawn)"}
    blob = json.dumps(payload).replace("</", "<\\/")
    esc = title.replace("&", "&amp;").replace("<", "&lt;")
    return (_HTML.replace("%TITLE%", esc).replace("%PLOTLY%", get_plotlyjs())
            .replace("%PAYLOAD%", blob))


def write_snapshot_html(path, graph, circuit, *, node_scores=None, edge_scores=None, prepped=None,
                        model=None, settings: Optional[dict] = None, layout: Optional[str] = None,
                        title: Optional[str] = None) -> None:
    """Write the standalone HTML of ``circuit`` (anything with ``nodes`` and ``edges``; scores default to
    ``circuit.node_scores``/``edge_scores``, full-length or aligned with the circuit). Feature
    visualizations, exemplars and layout come from ``prepped`` when given; kernels from ``prepped`` or
    from ``model``'s weights."""
    from viscnn.app import routes
    from viscnn.app.figures.graph3d import node_positions
    from viscnn.io import atomic_write_text

    ns = node_scores if node_scores is not None else getattr(circuit, "node_scores", None)
    es = edge_scores if edge_scores is not None else getattr(circuit, "edge_scores", None)
    pos = fv = ex = kern = None
    if prepped is not None:
        lay = layout if layout in prepped.layouts else (prepped.layouts[0] if prepped.layouts else None)
        pos = node_positions(graph, prepped.layout(lay)) if lay else None
        fv = lambda n: routes.node_image(prepped, n, "fv")
        ex = lambda n: [a for a in (routes.node_image(prepped, n, "ex", k) for k in range(4)) if a is not None]
        kern = lambda e: routes.kernel_of(prepped, e)
    elif model is not None:
        mods = dict(model.named_modules())

        def kern(e):
            li, j, i = (int(v) for v in graph.edges[e])
            layer = graph.layers[li]
            w = mods[layer.name].weight.detach().cpu().numpy()
            if w.ndim == 4:
                return w[j, i % (layer.in_channels // layer.groups)]
            k = w.shape[1] // layer.in_channels
            return w[j, i * k:(i + 1) * k].reshape(1, -1)
    snap = None
    if settings is not None:
        snap = snapshot_dict(getattr(prepped, "name", graph.model_name), settings, graph, circuit.nodes,
                             circuit.edges, ns, es)
    html = snapshot_html(graph, circuit.nodes, circuit.edges, ns, es, positions=pos, featurevis=fv, exemplars=ex,
                         kernel=kern, snapshot=snap, title=title or f"viscnn circuit: {graph.model_name}")
    atomic_write_text(path, html)


_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>%TITLE%</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh}
#g{flex:3}#p{flex:2;overflow:auto;padding:10px;border-left:1px solid #ddd}
img{image-rendering:pixelated;border:1px solid #ccc}.th img{width:56px;height:56px}
.row{display:flex;gap:8px;align-items:center;border-top:1px solid #eee;padding:4px 0}
pre{font-size:11px;white-space:pre-wrap}
</style>
<script>%PLOTLY%</script></head>
<body><div id="g"></div><div id="p"><h3>%TITLE%</h3><div id="sum"></div>
<p>Click a node for its panel.</p><div id="panel"></div><h4>Settings</h4><pre id="set"></pre></div>
<script id="payload" type="application/json">%PAYLOAD%</script>
<script>
var P = JSON.parse(document.getElementById('payload').textContent);
document.getElementById('sum').textContent = P.summary;
document.getElementById('set').textContent = P.snapshot ? JSON.stringify(P.snapshot.settings, null, 1) : '';
var g = document.getElementById('g');
Plotly.newPlot(g, P.figure.data, P.figure.layout, {displaylogo: false, responsive: true});
function img(src, t){ if(!src) return null; var i=document.createElement('img'); i.src=src; if(t) i.title=t; return i; }
function show(n){
  var d = P.panels[n], el = document.getElementById('panel'); el.innerHTML = '';
  if(!d){ el.textContent = 'No panel for this node (not in the circuit, or beyond the panel limit).'; return; }
  var h = document.createElement('h4'); h.textContent = 'Node ' + d.id + '  score ' + d.score.toPrecision(3); el.appendChild(h);
  var th = document.createElement('div'); th.className = 'th';
  [d.fv].concat(d.exemplars).forEach(function(s){ var i = img(s); if(i) th.appendChild(i); }); el.appendChild(th);
  var h2 = document.createElement('h4'); h2.textContent = 'Top incoming circuit edges'; el.appendChild(h2);
  d.incoming.forEach(function(r){
    var row = document.createElement('div'); row.className = 'row';
    [img(r.source_fv, r.source), img(r.kernel, 'kernel')].forEach(function(i){ if(i){ i.width = 48; row.appendChild(i);} });
    var t = document.createElement('span'); t.textContent = r.source + ' -> e' + r.edge + '  score ' + r.score.toPrecision(3);
    row.appendChild(t); el.appendChild(row);
  });
}
g.on('plotly_click', function(ev){ var c = ev.points[0].customdata; if (c !== undefined && c >= 0) show(c); });
</script></body></html>
"""
