"""App benchmark: server-side time and payload of a threshold change, and first paint in Chromium.

  .venv/bin/python benchmarks/app.py [--skip-alexnet] [--skip-browser]

Threshold changes are replayed through Dash's real HTTP endpoint (Flask test client, so no network
time) for every server callback a change triggers (the URL sync, the 3D graph and the faithfulness
line: the other consumers' state copies do not change, viscnn.app.shell.derived); the figure callback
is reported separately. Models: the default prepped model (``fmnist`` under prepped_models/, or the
tiny test fixture when it is not prepped yet) and a prepped *random* AlexNet (250,048 kernel edges)
written to a temp folder. Goals (issue 11): <= 150 ms and <= 2 MB per threshold change; first paint of
the default model <= 2.0 s, the median of 3 cold servers with a fresh headless Chromium each, timed in
the page from navigation start to the first animation frame with the 3D scene drawn (the wall-clock
time Playwright observes, which lags whenever the page's main thread is busy, is printed too). Model-run
targets (issue 12): seconds from entering a target to its circuit drawn, <= 3 s. Timings on a shared
machine vary with its load, which is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

GOAL_MS, GOAL_MB, GOAL_PAINT = 150.0, 2.0, 2.0  # issue 11: first paint <= 2.0 s


def _callback_key(app, needle: str) -> str:
    return next(k for k in app.callback_map if needle in k)


def _post(client, app, needle, inputs, changed, state=()):
    key = _callback_key(app, needle)
    outs = [{"id": o.split(".")[0], "property": o.split(".")[1]} for o in key.strip(".").split("...")]
    body = {"output": key, "outputs": outs if len(outs) > 1 else outs[0], "inputs": inputs,
            "changedPropIds": changed, "state": list(state)}
    t = time.perf_counter()
    r = client.post("/_dash-update-component", json=body)
    dt = time.perf_counter() - t
    if r.status_code not in (200, 204):
        raise RuntimeError(f"{needle}: HTTP {r.status_code}: {r.data[:300]}")
    return dt, len(r.data)


def threshold_bench(models_dir, name: str, values, mode: str = "mass", target: str = "loss", image_set: str = "all") -> dict:
    from viscnn.app import state as st
    from viscnn.app.callbacks_state import CONTROLS, _to_controls
    from viscnn.app.server import create_app
    from viscnn.app.shell import derived

    app = create_app(models_dir, name)
    client = app.server.test_client()
    s0 = app.viscnn.defaults(name)
    s0.update(mode=mode, target=target, set=image_set)

    def one(value, warm=False):
        s = dict(s0, value=value)
        ctl = [{"id": c, "property": p, "value": v} for (c, p), v in zip(CONTROLS, _to_controls(s))]
        t_sync, b_sync = _post(client, app, "url.search", [{"id": "url", "property": "search", "value": st.encode(s0)}] + ctl,
                               ["value.value"], [{"id": "state", "property": "data", "value": s0}])
        # a threshold change reaches the graph's and the faithfulness line's copies of the state
        # (viscnn.app.shell.derived, made in the browser): not the panel's, gallery's or run dispatcher's
        gs, fs = derived.derive(s, "graph-state"), derived.derive(s, "faith-state")
        t_fig, b_fig = _post(client, app, "graph3d.figure", [{"id": "graph-state", "property": "data", "value": gs},
                                                              {"id": "scores-ready", "property": "data", "value": None}],
                             ["graph-state.data"], [{"id": "center-on", "property": "data", "value": None}])
        t_pan, b_pan = _post(client, app, "faith-info.children", [{"id": "faith-run", "property": "n_clicks", "value": None},
                                                                  {"id": "faith-poll", "property": "n_intervals", "value": None},
                                                                  {"id": "faith-state", "property": "data", "value": fs}],
                             ["faith-state.data"])
        c = app.viscnn.resolve(s).circuit
        return {"circuit_edges": len(c.edges), "fig_ms": t_fig * 1e3, "fig_bytes": b_fig, "all_ms": (t_sync + t_fig + t_pan) * 1e3,
                "all_bytes": b_sync + b_fig + b_pan}

    one(values[0])  # warm: model load, score rows, positions
    runs = [one(v) for v in values[1:]]
    g = app.viscnn.prepped(name).graph
    return {"model": name, "edges": g.num_edges, "nodes": g.num_nodes, "changes": len(runs),
            "circuit_edges": [r["circuit_edges"] for r in runs],
            "figure_ms_median": statistics.median(r["fig_ms"] for r in runs),
            "figure_ms_max": max(r["fig_ms"] for r in runs),
            "figure_MB_max": max(r["fig_bytes"] for r in runs) / 1e6,
            "all_callbacks_ms_median": statistics.median(r["all_ms"] for r in runs),
            "all_callbacks_ms_max": max(r["all_ms"] for r in runs),
            "all_callbacks_MB_max": max(r["all_bytes"] for r in runs) / 1e6}


# In-page probe: the time (from navigation start, as the browser's own paint metrics count) of the first
# animation frame in which the 3D scene exists with data and the circuit info is on the page. Playwright's
# own polling is delayed whenever the page's main thread is busy, so the wall-clock time it observes is
# reported as well, but the probe is what a user sees.
PAINT_PROBE = """(() => { const tick = () => {
    const g = document.querySelector('#graph3d .js-plotly-plot');
    if (g && g._fullLayout && g._fullLayout.scene && g.data && g.data.length > 0
        && g.querySelector('.gl-container canvas') && document.querySelector('#drawn-count')) {
        window.__viscnnPaint = performance.now();
    } else { requestAnimationFrame(tick); } };
    requestAnimationFrame(tick); })();"""


def paint_once(browser, url: str) -> tuple:
    """(in-page first paint s, wall-clock s as Playwright observes it) for one fresh page."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.add_init_script(PAINT_PROBE)
    t = time.perf_counter()
    pg.goto(url)
    pg.wait_for_selector("#drawn-count", timeout=60000)
    pg.wait_for_selector("#graph3d .gl-container canvas", state="attached", timeout=60000)
    pg.wait_for_function("() => { const g = document.querySelector('#graph3d .js-plotly-plot');"
                         " return g && g._fullLayout && g._fullLayout.scene && g.data.length > 0; }")
    wall = time.perf_counter() - t
    pg.wait_for_function("() => window.__viscnnPaint !== undefined", timeout=60000)
    probe = pg.evaluate("() => window.__viscnnPaint") / 1000.0
    pg.close()
    return probe, wall


def first_paint(models_dir, name: str, repeats: int = 3) -> dict:
    """The acceptance protocol: ``repeats`` times a cold server (a new process) and a fresh browser
    (no caches), one page load each; the median of the in-page first paints."""
    from playwright.sync_api import sync_playwright

    from app_fixture import free_port, start_server
    from test_browser import ARGS

    runs = []
    with sync_playwright() as p:
        for _ in range(repeats):
            port = free_port()
            proc = start_server(models_dir, name, port)
            try:
                b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                runs.append(paint_once(b, f"http://127.0.0.1:{port}/"))
                b.close()
            finally:
                proc.terminate()
                proc.wait(10)
                Path(proc.log_path).unlink(missing_ok=True)
    return {"first_paint_s": statistics.median(r[0] for r in runs), "first_paint_runs_s": [round(r[0], 3) for r in runs],
            "observed_s": statistics.median(r[1] for r in runs)}


# model runs (a class's own logit over its own images is precomputed by prep and drawn at once: not timed here)
TARGETS = [("class:Sneaker", "all"), ("class:Trouser", "Bag"), ("class:Shirt - class:Coat", "Shirt")]
GOAL_TARGET_S = 3.0  # issue 12: a class target over 256 images of a set, in the app


def target_runs(models_dir, name: str) -> dict:
    """Seconds from entering a target (with its image set) to its circuit drawn, through the real
    background callback (a model run over 256 images of the set), as Playwright observes it in a page;
    and whether the progress bar was seen meanwhile."""
    from playwright.sync_api import sync_playwright

    from app_fixture import free_port, start_server
    from test_browser import ARGS, wait_ready

    port = free_port()
    proc = start_server(models_dir, name, port)
    out = []
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            pg = b.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(120000)
            pg.goto(f"http://127.0.0.1:{port}/")
            wait_ready(pg)
            for target, iset in TARGETS:
                pg.evaluate("() => { window.__bar = false; const f = () => { if (document.querySelector('#run-progress progress'))"
                            " window.__bar = true; if (!window.__stopBar) requestAnimationFrame(f); }; window.__stopBar = false;"
                            " requestAnimationFrame(f); }")
                pg.fill("#imageset", iset)
                pg.press("#imageset", "Enter")
                pg.wait_for_function("(document.querySelector('#circuit-of')?.textContent ?? '').includes('|' + arguments[0] + '|')"
                                     .replace("arguments[0]", repr(iset)))
                t = time.perf_counter()
                pg.fill("#target", target)
                pg.press("#target", "Enter")
                want = f"{target}|{iset}|"
                pg.wait_for_function(f"(document.querySelector('#circuit-of')?.textContent ?? '').startsWith({want!r})")
                dt = time.perf_counter() - t
                bar = pg.evaluate("() => { window.__stopBar = true; return window.__bar; }")
                line = pg.inner_text("#edge-info")
                out.append({"target": target, "set": iset, "s": round(dt, 2), "progress_bar_seen": bar,
                            "images_256": "mean over 256 train images" in line})
            b.close()
    finally:
        proc.terminate()
        proc.wait(10)
        Path(proc.log_path).unlink(missing_ok=True)
    return {"runs": out, "max_s": max(r["s"] for r in out)}


def default_model(tmp: Path):
    from viscnn.paths import default_models_dir
    from viscnn.prepped import list_models

    if "fmnist" in list_models(default_models_dir()):
        return default_models_dir(), "fmnist", False
    from app_fixture import make_prepped

    make_prepped(tmp, "tiny")
    return tmp, "tiny", True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-alexnet", action="store_true")
    ap.add_argument("--skip-browser", action="store_true")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        mdir, name, fixture = default_model(tmp / "default")
        if fixture:
            print("note: prepped_models/fmnist is missing; using the tiny test fixture as the default model")
        results["default"] = threshold_bench(mdir, name, [0.5, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
        if not args.skip_alexnet:
            from app_fixture import make_prepped

            t = time.perf_counter()
            make_prepped(tmp / "big", "alexnet", spec="torchvision:alexnet", input_shape=(3, 224, 224),
                         include_classes=False, n_images=2, fv_size=8)
            print(f"prepped random AlexNet in {time.perf_counter() - t:.1f}s")
            results["alexnet"] = threshold_bench(tmp / "big", "alexnet", [0.5, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
            results["alexnet_topk"] = threshold_bench(tmp / "big", "alexnet", [1000, 5000, 20000, 100000], mode="topk")
        if not args.skip_browser:
            results["paint"] = first_paint(mdir, name)
            if not fixture:
                results["targets"] = target_runs(mdir, name)
    print(json.dumps(results, indent=1))
    ok = True
    for k, r in results.items():
        if "figure_ms_median" in r:
            good = r["all_callbacks_ms_median"] <= GOAL_MS and r["all_callbacks_MB_max"] <= GOAL_MB
            ok &= good
            print(f"{k}: threshold change {r['all_callbacks_ms_median']:.0f} ms median (figure callback "
                  f"{r['figure_ms_median']:.0f} ms), payload {r['all_callbacks_MB_max']:.2f} MB max "
                  f"-> {'OK' if good else 'MISSES GOAL'} (goal {GOAL_MS:.0f} ms, {GOAL_MB} MB)")
    if "paint" in results:
        pr = results["paint"]
        good = pr["first_paint_s"] <= GOAL_PAINT
        ok &= good
        print(f"first paint: {pr['first_paint_s']:.2f} s median of {len(pr['first_paint_runs_s'])} cold servers with a "
              f"fresh browser each (runs {pr['first_paint_runs_s']}; as Playwright observes it: {pr['observed_s']:.2f} s)"
              f" -> {'OK' if good else 'MISSES GOAL'} (goal {GOAL_PAINT} s)")
        print("machine load:", os.getloadavg())
    if "targets" in results:
        tr = results["targets"]
        good = tr["max_s"] <= GOAL_TARGET_S and all(r["images_256"] for r in tr["runs"])
        ok &= good
        for r in tr["runs"]:
            print(f"target {r['target']!r} over 256 images of {r['set']!r}: {r['s']:.2f} s to the drawn circuit "
                  f"(progress bar seen: {r['progress_bar_seen']}; page says 256 images: {r['images_256']})")
        print(f"model runs in the app: max {tr['max_s']:.2f} s -> {'OK' if good else 'MISSES GOAL'} (goal {GOAL_TARGET_S} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
