"""Small PNG routes (feature visualizations, exemplars, kernel glyphs, input images) so that panels
and the circuit view reference images by URL instead of shipping them inside callback payloads.

Only data under the models directory is served, through PreppedModel's checked accessors; names are
validated (model names and layer names must exist in the graph; gallery files must be in images/).
"""

from __future__ import annotations

import numpy as np

from viscnn.errors import ViscnnError

PREFIX = "/viscnn-img"


def fv_url(model: str, node: int, stretch: bool = False) -> str:
    """URL of a node's feature visualization; ``stretch=True`` asks for the contrast-stretched version
    (served as is when the picture has enough contrast, see :func:`stretch_contrast`)."""
    return f"{PREFIX}/{model}/fv/{node}.png" + ("?stretch=1" if stretch else "")


# Contrast stretch of nearly uniform thumbnails. The percentiles are robust ones (2..98, not 1..99):
# the default model's conv1 visualizations are ~98% near-black (gray 5..15) with a few saturated
# border pixels, so their 1..99 range is ~250 levels and only a 2..98 range sees that they look uniform.
STRETCH_PCT = (2.0, 98.0)
STRETCH_BELOW = 96  # stretch when the percentile range is narrower than this many gray levels
_STRETCH_SAMPLE = 65536  # percentiles of big pictures are estimated on a strided sample


def _stretch_range(img: np.ndarray):
    a = np.asarray(img)
    step = max(1, int(np.ceil(np.sqrt(a.size / _STRETCH_SAMPLE))))
    sample = a[::step, ::step] if a.ndim >= 2 else a
    lo, hi = np.percentile(np.asarray(sample, np.float64), STRETCH_PCT)
    return float(lo), float(hi)


def stretch_contrast(img: np.ndarray):
    """(picture, stretched): a low-contrast uint8 picture (its ``STRETCH_PCT`` percentile range under
    ``STRETCH_BELOW`` gray levels) linearly mapped so that range becomes 0..255 (clipped beyond), all
    channels together so hues keep their relation; any other picture (or a constant one, which has
    nothing to stretch) is returned unchanged with False."""
    a = np.asarray(img)
    if a.size == 0:
        return a, False
    lo, hi = _stretch_range(a)
    if not _low_contrast(lo, hi):
        return a, False
    out = (np.asarray(a, np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.round(out), 0, 255).astype(np.uint8), True


def fv_is_low_contrast(pm, node: int) -> bool:
    """Whether ``fv_url(..., stretch=True)`` of this node serves a stretched picture (False when the
    node has no prepped feature visualization or is not a node). Cached per prepped model: the 2D
    circuit asks for every drawn node on each update, and the pictures never change."""
    cache = pm.__dict__.setdefault("_fv_low_contrast", {})
    node = int(node)
    if node not in cache:
        cache[node] = _fv_low_contrast(pm, node)
    return cache[node]


def _fv_low_contrast(pm, node: int) -> bool:
    try:
        a = node_image(pm, int(node), "fv")
    except ViscnnError:
        return False
    if a is None or a.size == 0:
        return False
    return _low_contrast(*_stretch_range(a))


def _low_contrast(lo: float, hi: float) -> bool:
    """A percentile range worth stretching: narrower than STRETCH_BELOW levels, but not constant."""
    return 1 <= hi - lo < STRETCH_BELOW


def ex_url(model: str, node: int, k: int) -> str:
    return f"{PREFIX}/{model}/ex/{node}/{k}.png"


def kernel_url(model: str, edge: int) -> str:
    return f"{PREFIX}/{model}/kernel/{edge}.png"


def edge_fv_url(model: str, edge: int) -> str:
    return f"{PREFIX}/{model}/efv/{edge}.png"


def edge_image(pm, edge: int):
    """uint8 edge visualization of one kernel, or None when prep did not make one for it."""
    edges, imgs, _ = pm.edge_featurevis()
    if imgs is None:
        return None
    hit = np.flatnonzero(edges == int(edge))
    return np.asarray(imgs[hit[0]]) if len(hit) else None


def input_url(model: str, key: str) -> str:
    return f"{PREFIX}/{model}/input/{key}"


def node_image(pm, node: int, kind: str = "fv", k: int = 0):
    """uint8 picture of a node: its feature visualization or k-th exemplar, None if not prepped."""
    g = pm.graph
    if not 0 <= node < g.num_nodes:
        raise ViscnnError(f"no node {node}")
    layer = g.layers[int(g.node_layer[node])]
    if layer.kind == "input":
        return None
    ch = int(g.node_channel[node])
    arr = pm.featurevis(layer.name) if kind == "fv" else pm.exemplars(layer.name)
    if arr is None or ch >= arr.shape[0]:
        return None
    if kind == "fv":
        return np.asarray(arr[ch])
    if k >= arr.shape[1]:
        return None
    return np.asarray(arr[ch, k])


def kernel_of(pm, edge: int) -> np.ndarray:
    g = pm.graph
    if not 0 <= edge < g.num_edges:
        raise ViscnnError(f"no edge {edge}")
    li, j, i = (int(v) for v in g.edges[edge])
    layer = g.layers[li]
    k = pm.kernels(layer.name)
    if k.ndim == 2 and layer.kind == "conv":  # a Linear over NHWC channels, stored [out, in]: 1x1 kernels
        return np.asarray(k[j, i], np.float32).reshape(1, 1)
    return np.asarray(k[j, i % (layer.in_channels // layer.groups)], np.float32)


def register(server, ctx) -> None:
    from flask import Response, abort, request

    from viscnn.app.figures.panels import kernel_rgb, png_bytes

    def png(arr, upscale=1):
        a = np.asarray(arr, np.uint8)
        if upscale > 1:
            a = a.repeat(upscale, 0).repeat(upscale, 1)
        return Response(png_bytes(a), mimetype="image/png", headers={"Cache-Control": "max-age=3600"})

    def model(name):
        try:
            return ctx.prepped(name)
        except ViscnnError:
            abort(404)

    @server.route(f"{PREFIX}/<name>/fv/<int:node>.png")
    def _fv(name, node):
        try:
            a = node_image(model(name), node, "fv")
        except ViscnnError:
            abort(404)
        if a is None:
            abort(404)
        if request.args.get("stretch") == "1":
            a, _ = stretch_contrast(a)
        return png(a)

    @server.route(f"{PREFIX}/<name>/ex/<int:node>/<int:k>.png")
    def _ex(name, node, k):
        try:
            a = node_image(model(name), node, "ex", k)
        except ViscnnError:
            abort(404)
        if a is None:
            abort(404)
        return png(a)

    @server.route(f"{PREFIX}/<name>/kernel/<int:edge>.png")
    def _kernel(name, edge):
        try:
            k = kernel_of(model(name), edge)
        except ViscnnError:
            abort(404)
        if k.ndim != 2:
            k = k.reshape(1, -1)
        return png(kernel_rgb(k), upscale=max(1, 48 // max(k.shape)))

    @server.route(f"{PREFIX}/<name>/efv/<int:edge>.png")
    def _efv(name, edge):
        a = edge_image(model(name), edge)
        if a is None:
            abort(404)
        return png(a)

    @server.route(f"{PREFIX}/<name>/input/<key>")
    def _input(name, key):
        model(name)
        try:
            return png(ctx.image(name, key))
        except ViscnnError:
            abort(404)

    register_exports(server)


EXPORT_PREFIX = "/viscnn-export"
MAX_EXPORT_BYTES = 8 << 20


def register_exports(server) -> None:
    """POST /viscnn-export/circuit2d.svg: the 2D circuit the page shows, as a standalone SVG (pictures
    embedded). Pictures are read through this server's own image routes (same-process requests only)."""
    from flask import Response, request

    from viscnn.app.figures.circuit_svg import circuit_svg

    def fetch(url: str):
        if not url.startswith(PREFIX + "/") or "//" in url or ".." in url:
            return None  # only our own picture routes: nothing is ever fetched from elsewhere
        r = server.test_client().get(url)
        return r.data if r.status_code == 200 and r.mimetype == "image/png" else None

    @server.route(f"{EXPORT_PREFIX}/circuit2d.svg", methods=["POST"])
    def _circuit_svg():
        if (request.content_length or 0) > MAX_EXPORT_BYTES:
            return Response("the 2D circuit is too large to export", status=413, mimetype="text/plain")
        payload = request.get_json(silent=True)
        if payload is None:
            return Response("expected the diagram's elements as JSON", status=400, mimetype="text/plain")
        try:
            svg = circuit_svg(payload, fetch, title=str(payload.get("title", "viscnn 2D circuit"))[:200]
                              if isinstance(payload, dict) else "viscnn 2D circuit")
        except ViscnnError as e:
            return Response(str(e), status=400, mimetype="text/plain")
        return Response(svg, mimetype="image/svg+xml")
