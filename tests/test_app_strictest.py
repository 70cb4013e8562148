"""An empty threshold circuit in the app says the strictest value that keeps a path, as a link that does."""

from urllib.parse import parse_qs

import pytest

from app_fixture import make_prepped
from app_fixture import walk as _walk


@pytest.fixture(scope="module")
def actx(tmp_path_factory):
    from viscnn.app.server import create_app

    root = tmp_path_factory.mktemp("strictest")
    make_prepped(root, "tiny")
    return create_app(root, "tiny", cache_dir=root / "cache").viscnn


def _hint(props):
    return next((c for c in _walk(props["edge-info"]["children"]) if getattr(c, "id", None) == "empty-hint"), None)


@pytest.mark.parametrize("mode,value,looser", [("topk", 1, lambda v: v + 1), ("score", 1e9, lambda v: v * 0.999),
                                               ("mass", 1e-6, lambda v: min(1.0, v + 1e-3))])
@pytest.mark.parametrize("iset", ["all", "Trouser"])
def test_empty_circuit_links_the_strictest_threshold(actx, mode, value, looser, iset):
    from viscnn.app import state as st
    from viscnn.app.callbacks_graph import circuit_props

    s = dict(actx.defaults("tiny"), mode=mode, value=value, target="loss", set=iset)
    hint = _hint(circuit_props(actx, s))
    if len(actx.resolve(s).circuit.edges):  # each layer's top edge can connect at any mass (Trouser here)
        assert mode == "mass" and hint is None
        return
    assert hint is not None and "strictest" in str(hint)
    link = next(c for c in _walk(hint.children) if getattr(c, "id", None) == "empty-fix")
    v = float(parse_qs(link.href.lstrip("?"))["value"][0])
    assert link.href == st.encode(dict(s, value=v))
    fixed = dict(s, value=v)
    assert len(actx.resolve(fixed).circuit.edges) > 0 and _hint(circuit_props(actx, fixed)) is None
    if mode == "topk" and v > 1:
        assert len(actx.resolve(dict(s, value=v - 1)).circuit.edges) == 0  # strictest: one fewer is empty
    if mode == "score":
        assert len(actx.resolve(dict(s, value=v * 1.001)).circuit.edges) == 0
    assert len(actx.resolve(dict(s, value=looser(v))).circuit.edges) > 0


def test_display_value_rounds_towards_looser():
    from viscnn.app import state as st
    from viscnn.app.views.circuit.strictest import display_value

    for v in (0.0344720184803009, 0.0457388, 1.0, 123456.789, 3.3e-7):
        d = display_value("score", v)
        assert d <= v and len(st.fmt_value(d).replace("0.", "").lstrip("0")) <= 12 and (v - d) <= 1e-5 * v
    assert display_value("score", 0.0344720184803009) == 0.034472
    assert display_value("mass", 0.00836412125391131) == 0.0084 and display_value("mass", 0.99995) == 1.0
    assert display_value("topk", 11804.0) == 11804.0
