"""The Artifacts view without a browser: props for a state, the compare size, bad input."""

from viscnn.app.views import drawn_now
import pytest

from app_fixture import make_prepped
from app_fixture import walk as _walk
from viscnn.errors import ViscnnError


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from viscnn.app.server import create_app

    root = tmp_path_factory.mktemp("artview")
    make_prepped(root, "tiny")
    return create_app(root, "tiny", cache_dir=root / "cache")


def test_strip_drill_patches_padding(app):
    from viscnn.app.views.artifacts.callbacks import _analysis, artifacts_props

    actx = app.viscnn
    s = dict(actx.defaults("tiny"), view="artifacts", baseline="random:4", dscale="permap")
    p = drawn_now(actx, artifacts_props, s)
    pm = actx.prepped("tiny")
    convs = [l.name for l in pm.graph.layers if l.kind == "conv"]
    a = _analysis(actx, "tiny", s, tuple(pm.input_shape[1:]))
    assert [m.layer for m in a.mean_maps] == convs and a.mean_maps[0].images == 4
    body = list(_walk(p["art-body"]["children"]))
    imgs = [c for c in body if type(c).__name__ == "Img"]
    # one tile per layer, one per drilled channel (at most 64), two per conv in the patch table
    n_drill = min(64, a.drill.maps.shape[0])
    assert len(imgs) == len(convs) + n_drill + 2 * len(a.patches)
    assert all(i.src.startswith("data:image/png;base64,") for i in imgs)
    tables = [c for c in body if type(c).__name__ == "DataTable"]
    assert len(tables) == 1 and len(tables[0].data) == len(a.padding["padding"])
    # the drill-down is ordered by its artifact score
    sc = [a.drill_scores[c] for c in a.drill_order]
    assert sc == sorted(sc, reverse=True)


def test_compare_size_and_errors(app):
    from viscnn.app.views.artifacts.callbacks import artifacts_props, parse_size

    actx = app.viscnn
    s = dict(actx.defaults("tiny"), view="artifacts", cmpsize="29x29")
    p = drawn_now(actx, artifacts_props, s)
    heads = [c.children for c in _walk(p["art-body"]["children"]) if type(c).__name__ == "H4"]
    assert any(h.startswith("Side by side with 29×29") for h in heads)
    assert any(h.startswith("Padding audit at 29×29") for h in heads)
    assert parse_size("30") == (30, 30) and parse_size(" 29 x 31 ") == (29, 31) and parse_size("") is None
    with pytest.raises(ViscnnError, match="compare size"):
        parse_size("big")
    with pytest.raises(ViscnnError, match="no conv layer"):
        drawn_now(actx, artifacts_props, dict(s, drill="nope"))
    with pytest.raises(ViscnnError):
        drawn_now(actx, artifacts_props, dict(s, cmpsize="", baseline="stimulus:triangle"))


def test_compare_with_another_prepped_model(tmp_path):
    from viscnn.app.server import create_app
    from viscnn.app.views.artifacts.callbacks import artifacts_props

    make_prepped(tmp_path, "tiny")
    make_prepped(tmp_path, "big", input_shape=(1, 32, 32))
    actx = create_app(tmp_path, "tiny", cache_dir=tmp_path / "cache").viscnn
    p = drawn_now(actx, artifacts_props, dict(actx.defaults("tiny"), view="artifacts", cmpmodel="big"))
    heads = [c.children for c in _walk(p["art-body"]["children"]) if type(c).__name__ == "H4"]
    assert any(h.startswith("Side by side with big at 32×32") for h in heads), heads
    assert any(h.startswith("Padding audit at 32×32") for h in heads)
    with pytest.raises(ViscnnError, match="no prepped model"):
        drawn_now(actx, artifacts_props, dict(actx.defaults("tiny"), view="artifacts", cmpmodel="nope"))


def test_all_zero_maps_are_explained(app):
    """Blank tiles get a note only when every mean map is exactly 0 (a bias-free model under 'zero')."""
    from types import SimpleNamespace

    import numpy as np

    from viscnn.app.views.artifacts.callbacks import _all_zero_note, artifacts_props

    maps = lambda *vals: SimpleNamespace(baseline="zero", mean_maps=[SimpleNamespace(map=np.full((3, 3), v)) for v in vals])
    assert "exactly 0 under 'zero'" in _all_zero_note(maps(0.0, 0.0)).children
    assert _all_zero_note(maps(0.0, 1e-9)).children is None
    actx = app.viscnn
    p = drawn_now(actx, artifacts_props, dict(actx.defaults("tiny"), view="artifacts", baseline="random:4"))
    assert not any("art-zero-note" in (getattr(c, "className", "") or "") for c in _walk(p["art-body"]["children"]))
