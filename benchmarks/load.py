"""Load benchmark of the app server: U simulated users against one real ``viscnn serve`` for D seconds.

  .venv/bin/python benchmarks/load.py                                   # 20 users x 60 s, default model
  .venv/bin/python benchmarks/load.py --models-dir DIR --model NAME     # any prepped model (e.g. a big one)
  .venv/bin/python benchmarks/load.py --users 5 --duration 10 --json out.json

A big model for it: any prepped folder, e.g. the random AlexNet of benchmarks/app.py,
``tests/app_fixture.make_prepped(DIR, "alexnet", spec="torchvision:alexnet", input_shape=(3, 224, 224),
include_classes=False, n_images=2, fv_size=8)``, then ``--models-dir DIR --model alexnet``.

The server is started as a subprocess bound to 127.0.0.1 (loopback only; nothing else is contacted) on
a free port, with a fresh result cache of its own, and is always terminated: the whole script exits
within ``duration + 30`` s (a watchdog kills the server and the script if anything hangs).

Each user is a minimal Dash renderer over HTTP (stdlib ``http.client``, keep-alive, at most 6 parallel
connections per user like a browser). Nothing is replayed from a recording: the page is driven from what
the server itself publishes. A page load is ``GET /`` (its ``_dash-config`` gives the ``endId`` token that
every callback request echoes), the page's scripts and stylesheets (once per user: a browser caches
them), ``/_dash-layout`` (with the page as Referer, as the app reads its query from it) and
``/_dash-dependencies``. The layout becomes a property store; the dependencies become the callbacks,
whose request bodies (``output``, ``outputs``, ``inputs`` with values, ``state``,
``changedPropIds``, pattern-matching ``ALL`` inputs as lists) are built from that store the way
dash-renderer builds them. A user change sets a property and runs the callback chain: every server
callback that has a changed property as an Input fires (a callback's own outputs do not refire it),
the callbacks of one round in parallel; responses update the store; components that appear in new
``children`` fire the callbacks whose Inputs they hold (Dash's rule, also for ``prevent_initial_call``
ones unless their output arrives with them); ``dcc.Interval`` components that a callback enabled tick
at their interval until disabled (how the page polls a background model run); clientside callbacks
are not run, except the page-state copies of ``viscnn.app.shell.derived``, which it reproduces. Every ``/viscnn-img/...`` picture a response puts in the page (gallery, 2D circuit,
panel) is fetched once per user (the browser caches them for an hour). This mirrors the traffic
Playwright recorded for one browser session (load, threshold changes, a node click, an image switch, a
``class:`` target with its progress polling). What the script knows of the app: the ids of the
controls a user changes (``value``, ``mode``, ``target``, ``graph3d`` clickData, the gallery buttons
that feed ``image``) and the picture route prefix.

Each user loads the page, then loops (think time ``--think``, default 1..3 s) over a mix of actions:
threshold change (a new mass/topk value, sometimes a mode switch) 40%, node or edge click in the 3D
graph 27%, gallery image switch 18%, page reload 8%, target change 7% (``class:K`` or
``class:A - class:B`` over the set ``all``: a model run on the server's job pool, polled with its
progress like the browser does; sometimes back to ``loss``). Users start spread over the first
seconds; one unrecorded page load warms the server up first (``--no-warmup`` to skip it).

Reported per request kind (page, asset, layout, dependencies, each callback by its first output, each
picture route) and per user action (from the change to the last response and picture it caused):
count, errors, p50/p95/max latency. An error is an exception or timeout, an HTTP status >= 400, a
callback answer that is not Dash's JSON, or an app error the page would show (a non-empty
``className="...error..."`` element in an answer). Requests still running when the run ends are
counted as unfinished, not as errors. Server memory: RSS of the server process and its children,
sampled every 0.5 s (psutil, else /proc), peak / start / end, and the server's CPU time. The last line
is the verdict against the goals (issue 16): zero errors, and p95 <= 1 s for threshold changes (the
whole change as a user sees it: every callback and picture it causes). ``--json OUT`` writes it all.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from viscnn.app.shell import derived  # noqa: E402  (the clientside state copies, reproduced here)

GOAL_THRESHOLD_P95_S = 1.0
IMG_PREFIX = "/viscnn-img/"  # viscnn.app.routes.PREFIX + "/"
PARALLEL = 6  # connections per user, as a browser opens per host over HTTP/1.1
REQUEST_TIMEOUT_S = 30.0
STARTUP_BUDGET_S = 22.0  # server start + warm-up page load
GRACE_S = 3.0  # how long requests still running at the end may finish
HARD_MARGIN_S = 30.0
MAX_ROUNDS = 16  # callback rounds of one chain (a guard against cycles)
POLL_LIMIT_S = 120.0  # longest a user polls one background run
MIX = (("threshold", 0.40), ("click", 0.27), ("image", 0.18), ("reload", 0.08), ("target", 0.07))
MASS_VALUES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TOPK_VALUES = (50, 100, 200, 300, 500, 1000)


class Stopped(Exception):
    """The run is over: the user stops (not an error)."""


def ckey(cid) -> str:
    """A component id as the store keys it: the id itself, or a dict id as sorted compact JSON
    (dash-renderer's stringifyId)."""
    if isinstance(cid, dict):
        return json.dumps(cid, sort_keys=True, separators=(",", ":"))
    return str(cid)


def parse_id(s: str):
    return json.loads(s) if s.startswith("{") else s


def is_pattern(cid) -> bool:
    return isinstance(cid, dict) and any(isinstance(v, list) for v in cid.values())


def pattern_matches(pat: dict, cid) -> bool:
    if not isinstance(cid, dict) or set(cid) != set(pat):
        return False
    return all(isinstance(v, list) or cid[k] == v for k, v in pat.items())


def is_component(v) -> bool:
    return isinstance(v, dict) and "props" in v and "type" in v and "namespace" in v


def has_components(v) -> bool:
    if is_component(v):
        return True
    return isinstance(v, list) and any(has_components(x) for x in v)


def pct(xs: List[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list (0 for an empty one)."""
    if not xs:
        return 0.0
    k = max(0, min(len(xs) - 1, math.ceil(q / 100.0 * len(xs)) - 1))
    return xs[k]


class Callback:
    def __init__(self, spec: dict):
        self.key = spec["output"]
        parts = self.key[2:-2].split("...") if self.key.startswith("..") and self.key.endswith("..") else [self.key]
        self.multi = len(parts) > 1 or self.key.startswith("..")
        self.outputs = []
        for p in parts:
            i = p.rindex(".")
            self.outputs.append((parse_id(p[:i]), p[i + 1:]))
        self.inputs = [(parse_id(d["id"]), d["property"]) for d in spec.get("inputs", [])]
        self.state = [(parse_id(d["id"]), d["property"]) for d in spec.get("state", [])]
        self.prevent_initial = bool(spec.get("prevent_initial_call"))
        self.clientside = bool(spec.get("clientside_function"))
        self.unsupported = any(isinstance(v, list) and v != ["ALL"] for cid, _ in self.inputs + self.state + self.outputs
                               if isinstance(cid, dict) for v in cid.values())
        o = self.outputs[0]
        first = f"{ckey(o[0]) if not is_pattern(o[0]) else 'pattern'}.{o[1].split('@')[0]}"
        self.name = "cb " + first + (f"+{len(self.outputs) - 1}" if len(self.outputs) > 1 else "")


class Stats:
    """Latencies and errors per kind, thread-safe; closed at the end of the run."""

    def __init__(self):
        self.lock = threading.Lock()
        self.lat: Dict[str, List[float]] = {}
        self.err: Dict[str, int] = {}
        self.errors: List[str] = []
        self.closed = False
        self.inflight = 0

    def begin(self):
        with self.lock:
            self.inflight += 1

    def end(self, kind: str, dt: float, error: Optional[str] = None, started: bool = True) -> None:
        with self.lock:
            if started:
                self.inflight -= 1
            if self.closed:
                return
            self.lat.setdefault(kind, []).append(dt)
            if error:
                self.err[kind] = self.err.get(kind, 0) + 1
                if len(self.errors) < 50:
                    self.errors.append(f"{kind}: {error}"[:400])

    def close(self) -> int:
        with self.lock:
            self.closed = True
            return self.inflight

    def table(self) -> Dict[str, dict]:
        out = {}
        with self.lock:
            for k in sorted(self.lat):
                xs = sorted(self.lat[k])
                out[k] = {"count": len(xs), "errors": self.err.get(k, 0), "p50_ms": round(pct(xs, 50) * 1e3, 1),
                          "p95_ms": round(pct(xs, 95) * 1e3, 1), "max_ms": round(xs[-1] * 1e3, 1)}
        return out


class Run:
    """What all users share: the server address, the clock, the stats."""

    def __init__(self, port: int, deadline: float, classes: List[str], think: Tuple[float, float], mix=MIX):
        self.host, self.port = "127.0.0.1", port
        self.mix = tuple(mix)
        self.base = f"http://127.0.0.1:{port}"
        self.deadline = deadline
        self.classes = classes
        self.think = think
        self.req = Stats()
        self.act = Stats()
        self.stop = threading.Event()

    def over(self) -> bool:
        return self.stop.is_set() or time.monotonic() >= self.deadline


class User:
    """One browser tab: its connections, HTTP cache, and the page's component store."""

    def __init__(self, run: Run, uid: int, seed: int):
        self.run, self.uid = run, uid
        self.rng = random.Random(seed * 1000 + uid)
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix=f"user{uid}")
        self.cached: Set[str] = set()  # URLs the browser cache holds (assets, pictures)
        self.lock = threading.RLock()
        self.comps: Dict[str, dict] = {}
        self.kids: Dict[str, Set[str]] = {}
        self.callbacks: List[Callback] = []
        self.prefix = "/"
        self.end_id = ""
        self.search = ""
        self.loaded = False

    # -- HTTP ---------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = self.local.conn = http.client.HTTPConnection(self.run.host, self.run.port, timeout=REQUEST_TIMEOUT_S)
        return c

    def http(self, kind: str, method: str, path: str, body: Optional[bytes] = None, headers=None,
             check=None) -> Tuple[int, bytes]:
        """One request, recorded under ``kind``; ``check(status, data)`` returns an error text or None.
        Raises Stopped once the run is over (before sending), and RuntimeError after a recorded error."""
        if self.run.over():
            raise Stopped()
        h = {"Accept": "*/*", "User-Agent": "viscnn-load/1"}
        h.update(headers or {})
        if body is not None:
            h["Content-Type"] = "application/json"
        self.run.req.begin()
        t = time.perf_counter()
        err, status, data = None, 0, b""
        try:
            c = self._conn()
            try:
                c.request(method, path, body=body, headers=h)
                r = c.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # a keep-alive connection the server closed while idle: a browser retries on a new one
                c.close()
                c.request(method, path, body=body, headers=h)
                r = c.getresponse()
            data = r.read()
            dt = time.perf_counter() - t
            status = r.status
            if r.getheader("Connection", "").lower() == "close":
                c.close()
            if status >= 400:
                err = f"HTTP {status} {method} {path[:120]}: {data[:200]!r}"
            elif check is not None:
                err = check(status, data)
        except Exception as e:  # noqa: BLE001 - every failure of a request is an error of the run
            dt = time.perf_counter() - t
            err = f"{type(e).__name__}: {e} ({method} {path[:120]})"
            c = getattr(self.local, "conn", None)
            if c is not None:
                c.close()
                self.local.conn = None
        self.run.req.end(kind, dt, err)
        if err:
            raise RuntimeError(err)
        return status, data

    def fetch_cached(self, urls) -> None:
        """GET each URL the browser cache does not hold yet, up to PARALLEL at once."""
        todo = []
        for u in urls:
            if u not in self.cached:
                self.cached.add(u)
                todo.append(u)
        futs = [self.pool.submit(self._get_static, u) for u in todo]
        for f in futs:
            f.result()

    def _get_static(self, url: str) -> None:
        if url.startswith(IMG_PREFIX):
            parts = url[len(IMG_PREFIX):].split("/")  # MODEL/KIND/...
            kind = "img " + parts[1] if len(parts) > 2 else "img"

            def png(status, data):
                return None if data[:8] == b"\x89PNG\r\n\x1a\n" else f"not a PNG: {url}"

            self.http(kind, "GET", url, check=png)
        else:
            self.http("asset", "GET", url)

    # -- the component store ------------------------------------------------------------
    def _register(self, tree, parent: str, new: Set[str]) -> None:
        if isinstance(tree, list):
            for x in tree:
                self._register(x, parent, new)
            return
        if not is_component(tree):
            return
        props = tree["props"]
        owner = parent
        if "id" in props:
            k = ckey(props["id"])
            self._drop_kids(k)
            self.comps[k] = {"id": props["id"], "type": tree["type"], "props": props}
            self.kids.setdefault(parent, set()).add(k)
            new.add(k)
            owner = k
        for v in props.values():
            if isinstance(v, (dict, list)):
                self._register(v, owner, new)

    def _drop_kids(self, k: str) -> None:
        for c in self.kids.pop(k, set()):
            self._drop_kids(c)
            self.comps.pop(c, None)

    def get(self, k: str, prop: str, default=None):
        c = self.comps.get(k)
        return c["props"].get(prop, default) if c else default

    def set_props(self, changes: List[Tuple[str, str, object]]) -> Tuple[Set[Tuple[str, str]], Set[str], Set[str]]:
        """Apply (component key, prop, value) changes; (changed props, new component keys, picture URLs
        the new values hold)."""
        changed, new, imgs = set(), set(), set()
        with self.lock:
            for k, prop, v in changes:
                c = self.comps.get(k)
                if c is None:
                    continue  # an output no longer in the page
                c["props"][prop] = v
                changed.add((k, prop))
                if has_components(v):
                    self._drop_kids(k)
                    self._register(v, k, new)
                _urls(v, imgs)
            if ("state", "data") in changed:  # the app's clientside state copies (viscnn.app.shell.derived)
                for sid in derived.ids():
                    d, c = derived.derive((self.comps.get("state") or {"props": {}})["props"].get("data"), sid), self.comps.get(sid)
                    if c is not None and d is not None and c["props"].get("data") != d:
                        c["props"]["data"] = d
                        changed.add((sid, "data"))
        return changed, new, imgs

    def app_errors(self, changes) -> List[str]:
        """What an answer would show as an error: non-empty text into an element whose className holds
        'error', or such an element inside new children."""
        errs = []
        with self.lock:
            for k, prop, v in changes:
                if has_components(v):
                    errs += _errors_in(v)
                elif prop == "children" and v not in (None, "", []) and "error" in str(self.get(k, "className", "")):
                    errs.append(f"{k}: {str(v)[:200]}")
        return errs

    # -- callbacks ------------------------------------------------------------------------
    def _resolve(self, cid, prop, with_value: bool = True):
        """The request entry of one dependency (a dict, or a list of dicts for an ALL pattern) and the
        (key, prop) pairs it covers; (None, empty) when a plain id is not in the page."""
        def entry(c, real_id):
            d = {"id": real_id, "property": prop}
            if with_value and prop in c["props"]:
                d["value"] = c["props"][prop]
            return d

        if is_pattern(cid):
            hits = [(k, c) for k, c in self.comps.items() if pattern_matches(cid, c["id"])]  # page order
            return [entry(c, c["id"]) for _, c in hits], {(k, prop) for k, _ in hits}
        k = ckey(cid)
        c = self.comps.get(k)
        if c is None:
            return None, set()
        return entry(c, cid), {(k, prop)}

    def triggered(self, changed: Set[Tuple[str, str]], new: Set[str], source: Optional[Callback] = None,
                  initial: bool = False) -> Dict[str, Tuple[Callback, Set[Tuple[str, str]]]]:
        """{callback key: (callback, the changed inputs it sees)} that a set of changed props and newly
        inserted components fire, by dash-renderer's rules: a changed Input fires a callback (not the
        callback that made the change); on the first load every callback without prevent_initial_call
        fires; components inserted later fire the callbacks whose Inputs they hold, and those without
        prevent_initial_call whose Outputs they hold, except prevent_initial_call ones whose Output is
        inserted with them. A callback whose plain Inputs or States are not in the page does not fire."""
        out = {}
        with self.lock:
            for cb in self.callbacks:
                if cb.clientside or cb.unsupported or cb is source:
                    continue
                covered: Set[Tuple[str, str]] = set()
                present = True
                for i, (cid, prop) in enumerate(cb.inputs + cb.state):
                    _, cov = self._resolve(cid, prop, with_value=False)
                    if not cov and not is_pattern(cid):
                        present = False
                        break
                    if i < len(cb.inputs):
                        covered |= cov
                if not present:
                    continue
                hit = covered & changed
                fire = bool(hit)
                if initial:
                    fire = fire or not cb.prevent_initial
                elif new:
                    in_chunk = {kp for kp in covered if kp[0] in new}
                    outs_new = bool({ckey(o) for o, _ in cb.outputs if not is_pattern(o)} & new)
                    if in_chunk and not (cb.prevent_initial and outs_new):
                        fire, hit = True, hit | in_chunk
                    if outs_new and not cb.prevent_initial:
                        fire = True
                if fire:
                    out[cb.key] = (cb, hit)
        return out

    def fire(self, cb: Callback, hit: Set[Tuple[str, str]]):
        """POST one callback and apply its answer: (callback, changed props, new components, pictures)."""
        with self.lock:
            outs = []
            for cid, prop in cb.outputs:
                if is_pattern(cid):
                    e, _ = self._resolve(cid, prop, with_value=False)
                    outs.append([{"id": d["id"], "property": prop} for d in e])
                else:
                    outs.append({"id": cid, "property": prop})
            inputs = [self._resolve(cid, prop)[0] for cid, prop in cb.inputs]
            state = [self._resolve(cid, prop)[0] for cid, prop in cb.state]
            ids = sorted(f"{k}.{p}" for k, p in hit)
            parsed = [json.loads(i.rsplit(".", 1)[0]) if i.startswith("{") else i for i in ids]
        body = {"output": cb.key, "outputs": outs if cb.multi else outs[0], "inputs": inputs,
                "changedPropIds": ids, "parsedChangedPropsIds": parsed}
        if cb.state:
            body["state"] = state
        got: List[Tuple[str, str, object]] = []

        def check(status, data):
            if status == 204:  # PreventUpdate
                return None
            try:
                j = json.loads(data)
            except ValueError:
                return f"callback answer is not JSON: {data[:200]!r}"
            if not isinstance(j, dict) or not isinstance(j.get("response"), dict):
                return f"callback answer without a response: {data[:200]!r}"
            for part in (j["response"], j.get("sideUpdate") or {}):
                got.extend((ckey(parse_id(k)), p, v) for k, props in part.items() for p, v in props.items())
            errs = self.app_errors(got)
            return f"the page shows an error: {'; '.join(errs)}" if errs else None

        path = f"{self.prefix}_dash-update-component" + (f"?endId={self.end_id}" if self.end_id else "")
        self.http(cb.name, "POST", path, json.dumps(body).encode(), check=check)
        changed, new, imgs = self.set_props(got)
        return cb, changed, new, imgs

    def rounds(self, todo: Dict[str, Tuple[Callback, Set[Tuple[str, str]]]]) -> None:
        """Callback rounds until nothing more fires: each round's callbacks in parallel, then the
        pictures their answers put in the page."""
        n = 0
        while todo and n < MAX_ROUNDS:
            n += 1
            futs = [self.pool.submit(self.fire, cb, hit) for cb, hit in todo.values()]
            nxt: Dict[str, Tuple[Callback, Set[Tuple[str, str]]]] = {}
            imgs: Set[str] = set()
            first_err = None
            for f in futs:
                try:
                    cb, ch, nw, im = f.result()
                except (RuntimeError, Stopped) as e:
                    first_err = first_err or e
                    continue
                imgs |= im
                for k, (cb2, hit2) in self.triggered(ch, nw, cb).items():
                    if k in nxt:
                        nxt[k][1].update(hit2)
                    else:
                        nxt[k] = (cb2, set(hit2))
            if first_err:
                raise first_err
            self.fetch_cached(sorted(imgs))
            todo = nxt

    def chain(self, changed, new=frozenset(), initial: bool = False) -> None:
        """Everything a user change causes: the callback rounds, then, while a dcc.Interval that a
        callback enabled (``disabled`` explicitly False) is on, its ticks at its interval (the page
        polling a background model run)."""
        self.rounds(self.triggered(set(changed), set(new), None, initial))
        t0 = time.monotonic()
        while True:
            with self.lock:
                on = [(k, c) for k, c in self.comps.items() if c["type"] == "Interval" and c["props"].get("disabled") is False]
            if not on:
                return
            if time.monotonic() - t0 > POLL_LIMIT_S:
                raise RuntimeError(f"still polling a background run after {POLL_LIMIT_S:.0f} s")
            self._sleep(min(float(c["props"].get("interval", 1000)) for _, c in on) / 1000.0)
            ticks, _, _ = self.set_props([(k, "n_intervals", int(c["props"].get("n_intervals") or 0) + 1) for k, c in on])
            todo = self.triggered(ticks, set())
            if not todo:
                return
            self.rounds(todo)

    def _sleep(self, s: float) -> None:
        end = time.monotonic() + s
        while time.monotonic() < end:
            if self.run.over():
                raise Stopped()
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    # -- what a user does -----------------------------------------------------------------
    def load(self) -> str:
        url = "/" + self.search
        _, html = self.http("page", "GET", url)
        text = html.decode("utf-8", "replace")
        m = re.search(r'<script id="_dash-config" type="application/json">(.*?)</script>', text, re.S)
        cfg = json.loads(m.group(1)) if m else {}
        self.prefix = cfg.get("requests_pathname_prefix") or "/"
        self.end_id = cfg.get("end_id") or ""
        assets = re.findall(r'<script[^>]*\ssrc="([^"]+)"', text) + re.findall(r'<link[^>]*\shref="([^"]+)"', text)
        self.fetch_cached([a for a in assets if a.startswith("/")])
        ref = {"Referer": self.run.base + url}  # the app draws the page's view from its query
        got = {}

        def as_json(name):
            def check(status, data):
                try:
                    got[name] = json.loads(data)
                except ValueError:
                    return f"{name} is not JSON: {data[:200]!r}"
                errs = _errors_in(got[name]) if name == "layout" else []
                return f"the page shows an error: {'; '.join(errs)}" if errs else None
            return check

        futs = [self.pool.submit(self.http, n, "GET", f"{self.prefix}_dash-{n}", None, ref, as_json(n))
                for n in ("layout", "dependencies")]
        for f in futs:
            f.result()
        new: Set[str] = set()
        imgs: Set[str] = set()
        with self.lock:
            self.comps, self.kids = {}, {}
            self._register(got["layout"], "", new)
            self.callbacks = [Callback(d) for d in got["dependencies"]]
            _urls(got["layout"], imgs)
        self.fetch_cached(sorted(imgs))
        # dcc.Location reports the page's URL on mount (a prop change, as dash-renderer sees it)
        loc = [(k, p, v) for k, c in list(self.comps.items()) if c["type"] == "Location"
               for p, v in (("pathname", "/"), ("search", self.search), ("hash", ""), ("href", self.run.base + url))]
        changed, _, _ = self.set_props(loc)
        self.loaded = True
        self.chain(changed, new, initial=True)
        return "load"

    def act(self, what: str) -> str:
        """Do one user action; returns the action done (a click with nothing to click is a threshold change)."""
        if what in ("load", "reload") or not self.loaded:
            self.search = self.get("url", "search") or self.search
            self.load()
            return what if what in ("load", "reload") else "load"
        if what == "threshold":
            mode = self.get("mode", "value") or "mass"
            if self.rng.random() < 0.25:  # switch mode: the server resets the value to the mode's default
                self.change([("mode", "value", "topk" if mode == "mass" else "mass")])
                return what
            vals = TOPK_VALUES if mode == "topk" else MASS_VALUES
            cur = str(self.get("value", "value"))
            choice = self.rng.choice([v for v in vals if str(v) != cur] or list(vals))
            self.change([("value", "value", str(choice))])  # typed text, as the browser sends it
            return what
        if what == "click":
            pt = self._click_point(edge=self.rng.random() < 0.2)
            if pt is None:
                return self.act("threshold")
            self.change([("graph3d", "clickData", {"points": [pt], "timestamp": int(time.time() * 1000)})])
            return what
        if what == "image":
            btn = self._gallery_button()
            if btn is None:
                return self.act("threshold")
            k, n = btn
            self.change([(k, "n_clicks", n + 1)])
            return what
        if what == "target":
            cur = self.get("target", "value") or "loss"
            back = cur != "loss" and self.rng.random() < 0.3
            self.change([("target", "value", "loss" if back else self._target())])
            return what
        raise ValueError(what)

    def change(self, changes) -> None:
        """A user changes component props (typing, a click): everything that follows."""
        changed, new, _ = self.set_props([(ckey(k), p, v) for k, p, v in changes])
        self.chain(changed, new)

    def _click_point(self, edge: bool) -> Optional[dict]:
        fig = self.get("graph3d", "figure") or {}
        pts = []
        for ti, tr in enumerate(fig.get("data") or []):
            cd = tr.get("customdata")
            if not isinstance(cd, list):
                continue
            is_nodes = tr.get("name") == "nodes"
            for pi, v in enumerate(cd):
                if isinstance(v, list):
                    v = v[0] if v else None
                if not isinstance(v, (int, float)):
                    continue
                if (edge and v < 0 and not is_nodes) or (not edge and v >= 0 and is_nodes):
                    pts.append({"curveNumber": ti, "pointNumber": pi, "customdata": int(v)})
        if not pts and edge:
            return self._click_point(False)
        return self.rng.choice(pts) if pts else None

    def _gallery_button(self) -> Optional[Tuple[str, int]]:
        """A component feeding the callback that writes ``image.data`` through an ALL pattern of
        n_clicks (the gallery's thumbnails), other than the current image's."""
        cur = self.get("image", "data")
        with self.lock:
            pats = [cid for cb in self.callbacks if any(o == "image" for o, _ in cb.outputs)
                    for cid, prop in cb.inputs if is_pattern(cid) and prop == "n_clicks"]
            hits = [(k, c) for k, c in self.comps.items() for p in pats if pattern_matches(p, c["id"])]
        hits = [(k, c) for k, c in hits if cur not in c["id"].values()] or hits
        if not hits:
            return None
        k, c = self.rng.choice(hits)
        return k, int(c["props"].get("n_clicks") or 0)

    def _target(self) -> str:
        cls = self.run.classes
        if not cls:
            return f"class:{self.rng.randrange(10)}"
        names = [c if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", c) else str(i) for i, c in enumerate(cls)]
        if len(names) > 1 and self.rng.random() < 0.4:
            a, b = self.rng.sample(names, 2)
            return f"class:{a} - class:{b}"
        return f"class:{self.rng.choice(names)}"

    def loop(self, start_delay: float) -> None:
        try:
            self._sleep(start_delay)
            what = "load"
            while not self.run.over():
                t = time.perf_counter()
                err = None
                try:
                    what = self.act(what)
                except Stopped:
                    break  # cut off by the end of the run: not measured
                except RuntimeError as e:  # a request failed: already counted as a request error
                    err = str(e)
                except Exception as e:  # noqa: BLE001 - a broken page (or client) is an error too
                    err = f"{type(e).__name__}: {e}"
                    self.run.req.end("client", 0.0, err, started=False)
                self.run.act.end("action " + what, time.perf_counter() - t, err, started=False)
                if err and what in ("load", "reload"):
                    self.loaded = False
                if not self.loaded:
                    self._sleep(1.0)
                    what = "load"
                    continue
                self._sleep(self.rng.uniform(*self.run.think))
                what = self._pick()
        except Stopped:
            pass
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _pick(self) -> str:
        mix = self.run.mix
        x = self.rng.random() * sum(w for _, w in mix)
        for name, w in mix:
            x -= w
            if x < 0:
                return name
        return mix[-1][0]


def _errors_in(tree) -> List[str]:
    """Texts of non-empty error elements (className containing 'error') in a component tree."""
    out = []
    if isinstance(tree, list):
        for x in tree:
            out += _errors_in(x)
        return out
    if not is_component(tree):
        return out
    p = tree["props"]
    kids = p.get("children")
    if "error" in str(p.get("className", "")) and kids not in (None, "", []) and not has_components(kids):
        out.append(f"{p.get('id', tree['type'])}: {str(kids)[:200]}")
    for v in p.values():
        if isinstance(v, (dict, list)):
            out += _errors_in(v)
    return out


def _urls(v, acc: Set[str]) -> None:
    """Picture URLs (under the app's picture route) anywhere in a value."""
    if isinstance(v, str):
        if v.startswith(IMG_PREFIX):
            acc.add(v)
    elif isinstance(v, dict):
        for x in v.values():
            _urls(x, acc)
    elif isinstance(v, list):
        for x in v:
            _urls(x, acc)


# -- server ---------------------------------------------------------------------------------
class Sampler(threading.Thread):
    """RSS of the server and its children every 0.5 s; the server's CPU time."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: List[Tuple[float, int]] = []
        self.halt = threading.Event()
        try:
            import psutil

            self.ps = psutil.Process(pid)
        except Exception:  # noqa: BLE001 - psutil is optional
            self.ps = None
        self.how = "psutil" if self.ps is not None else "/proc"

    def rss_cpu(self) -> Tuple[int, float]:
        if self.ps is not None:
            import psutil

            procs = [self.ps]
            try:
                procs += self.ps.children(recursive=True)
            except psutil.Error:
                pass
            rss, cpu = 0, 0.0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                    if p is self.ps:
                        t = p.cpu_times()
                        cpu = t.user + t.system
                except psutil.Error:
                    pass
            return rss, cpu
        return _proc_rss_cpu(self.pid)

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.halt.is_set():
            try:
                rss, _ = self.rss_cpu()
                self.samples.append((round(time.monotonic() - t0, 2), rss))
            except Exception:  # noqa: BLE001 - the server may be gone at the very end
                pass
            self.halt.wait(0.5)


def _proc_rss_cpu(pid: int) -> Tuple[int, float]:
    def one(p):
        rss = 0
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        return rss

    def kids(p):
        out = []
        for tid in os.listdir(f"/proc/{p}/task"):
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
        return out

    rss, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            rss += one(p)
            todo += kids(p)
        except OSError:
            pass
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return rss, (int(st[11]) + int(st[12])) / tick


def start_server(models_dir, name: str, port: int, cache_dir: str, timeout: float):
    """``viscnn serve`` bound to 127.0.0.1 in its own process group, answering within ``timeout`` s."""
    import urllib.request

    log = tempfile.NamedTemporaryFile(prefix="viscnn-load-serve-", suffix=".log", delete=False)
    env = dict(os.environ, TMPDIR=cache_dir)  # the app's result cache is a temp folder: keep it ours
    proc = subprocess.Popen([sys.executable, "-m", "viscnn", "serve", name, "--models-dir", str(models_dir),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=str(REPO), start_new_session=True)
    proc.log_path = log.name
    log.close()
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {Path(proc.log_path).read_text(errors='replace')[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_dash-layout", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"server did not answer within {timeout:.0f} s")


def stop_server(proc, wait: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except OSError:
        proc.terminate()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.wait(5)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_classes(models_dir: Path, name: str) -> List[str]:
    try:
        return list(json.loads((Path(models_dir) / name / "manifest.json").read_text()).get("classes") or [])
    except (OSError, ValueError):
        return []


# -- the run ----------------------------------------------------------------------------------
def run_load(models_dir, name: str, users: int = 20, duration: float = 60.0, think=(1.0, 3.0), seed: int = 0,
             warmup: bool = True, t_start: Optional[float] = None, mix=MIX, server_log: Optional[str] = None) -> dict:
    t_start = time.monotonic() if t_start is None else t_start
    hard_end = t_start + duration + HARD_MARGIN_S - 1.0
    port = free_port()
    cache = tempfile.TemporaryDirectory(prefix="viscnn-load-")
    proc = start_server(models_dir, name, port, cache.name, STARTUP_BUDGET_S - 2)
    watchdog_fired = []

    def watchdog():  # the last resort of the hard cap: never leave a server behind, never run long
        watchdog_fired.append(True)
        print(f"load.py: hard time cap ({duration + HARD_MARGIN_S:.0f} s) reached; killing the server", file=sys.stderr, flush=True)
        stop_server(proc, 1.0)
        if threading.current_thread() is not threading.main_thread():
            os._exit(3)

    dog = threading.Timer(max(1.0, hard_end - time.monotonic()), watchdog)
    dog.daemon = True
    dog.start()
    sampler = Sampler(proc.pid)
    try:
        t_ready = time.monotonic()
        warm_s = None
        if warmup:
            w = Run(port, min(t_start + STARTUP_BUDGET_S, time.monotonic() + 15), model_classes(models_dir, name), think)
            u = User(w, -1, seed)
            t = time.perf_counter()
            try:
                u.load()
                warm_s = round(time.perf_counter() - t, 2)
            except (Stopped, RuntimeError) as e:
                print(f"warm-up page load did not finish ({e}); measuring from cold", file=sys.stderr)
            u.pool.shutdown(wait=False, cancel_futures=True)
        rss0, cpu0 = sampler.rss_cpu()
        sampler.start()
        t0 = time.monotonic()
        run = Run(port, t0 + duration, model_classes(models_dir, name), think, mix)
        ramp = min(5.0, duration / 6.0)
        us = [User(run, i, seed) for i in range(users)]
        threads = [threading.Thread(target=u.loop, args=(ramp * i / max(1, users),), daemon=True, name=f"user{i}")
                   for i, u in enumerate(us)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, run.deadline + GRACE_S - time.monotonic()))
        run.stop.set()
        unfinished = run.req.close()
        run.act.close()
        wall = time.monotonic() - t0
        rss1, cpu1 = sampler.rss_cpu()
    finally:
        sampler.halt.set()
        stop_server(proc)
        dog.cancel()
        log = Path(proc.log_path).read_text(errors="replace") if Path(proc.log_path).exists() else ""
        if server_log:
            Path(server_log).write_text(log)
        # the server's own output without its request log: tracebacks, warnings
        log_tail = "\n".join(ln for ln in log.splitlines() if '" 200 -' not in ln and '" 204 -' not in ln)[-4000:]
        Path(proc.log_path).unlink(missing_ok=True)
        cache.cleanup()
    reqs, acts = run.req.table(), run.act.table()
    rss = [r for _, r in sampler.samples] or [rss1]
    n_req = sum(r["count"] for r in reqs.values())
    n_err = sum(r["errors"] for r in reqs.values())
    n_failed = sum(a["errors"] for a in acts.values())
    cb = sorted(x for k, xs in run.req.lat.items() if k.startswith("cb ") for x in xs)
    thr = acts.get("action threshold")
    ok_err = n_err == 0 and n_failed == 0
    ok_thr = thr is not None and thr["p95_ms"] <= GOAL_THRESHOLD_P95_S * 1e3
    verdict = (f"{'PASS' if ok_err and ok_thr else 'FAIL'}: {users} users x {duration:g} s on {name}: {n_req} requests, "
               f"{n_err} errors, {n_failed} failed actions (goal 0: {'ok' if ok_err else 'MISSED'}); threshold change p95 "
               + (f"{thr['p95_ms'] / 1e3:.2f} s over {thr['count']}" if thr else "n/a (none ran)")
               + f" (goal <= {GOAL_THRESHOLD_P95_S:g} s: {'ok' if ok_thr else 'MISSED'}); "
               f"server RSS peak {max(rss) / 2**20:.0f} MiB")
    return {
        "model": name, "models_dir": str(models_dir), "users": users, "duration_s": duration, "wall_s": round(wall, 2),
        "think_s": list(think), "mix": {k: w for k, w in mix}, "seed": seed, "warmup_load_s": warm_s, "startup_s": round(t_ready - t_start, 2),
        "requests": reqs, "actions": acts,
        "totals": {"requests": n_req, "errors": n_err, "failed_actions": n_failed, "unfinished_at_end": unfinished,
                   "requests_per_s": round(n_req / max(wall, 1e-9), 1),
                   "callbacks": {"count": len(cb), "p50_ms": round(pct(cb, 50) * 1e3, 1),
                                 "p95_ms": round(pct(cb, 95) * 1e3, 1), "max_ms": round((cb[-1] if cb else 0) * 1e3, 1)}},
        "errors_sample": run.req.errors[:20] + run.act.errors[:10],
        "server": {"rss_peak_mb": round(max(rss) / 2**20, 1), "rss_start_mb": round(rss0 / 2**20, 1),
                   "rss_end_mb": round(rss1 / 2**20, 1), "cpu_s": round(cpu1 - cpu0, 1),
                   "cpu_cores_used": round((cpu1 - cpu0) / max(wall, 1e-9), 2), "rss_samples": len(sampler.samples),
                   "rss_via": sampler.how, "log_tail": log_tail if n_err or n_failed else ""},
        "machine": {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]},
        "goals": {"errors": 0, "threshold_p95_s": GOAL_THRESHOLD_P95_S},
        "verdict": {"ok": bool(ok_err and ok_thr), "zero_errors": ok_err, "threshold_p95_ok": ok_thr, "line": verdict},
        "watchdog_fired": bool(watchdog_fired),
    }


def print_report(res: dict) -> None:
    def table(title, rows):
        print(f"\n{title:<44} {'count':>6} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for k, r in rows.items():
            print(f"{k[:44]:<44} {r['count']:>6} {r['errors']:>6} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['max_ms']:>8.1f}")

    print(f"model {res['model']} ({res['models_dir']}), {res['users']} users, {res['duration_s']:g} s "
          f"(think {res['think_s'][0]:g}..{res['think_s'][1]:g} s), server up in {res['startup_s']} s, "
          f"warm-up page load {res['warmup_load_s']} s")
    table("request", res["requests"])
    table("user action (change -> everything it caused)", res["actions"])
    t, s = res["totals"], res["server"]
    print(f"\n{t['requests']} requests ({t['requests_per_s']}/s), {t['errors']} errors, {t['failed_actions']} failed actions, "
          f"{t['unfinished_at_end']} unfinished "
          f"at the end; all callbacks p50 {t['callbacks']['p50_ms']:.0f} ms, p95 {t['callbacks']['p95_ms']:.0f} ms")
    print(f"server RSS peak {s['rss_peak_mb']} MiB (start {s['rss_start_mb']}, end {s['rss_end_mb']}; {s['rss_samples']} "
          f"samples via {s['rss_via']}), CPU {s['cpu_s']} s = {s['cpu_cores_used']} cores; machine {res['machine']['cpus']} "
          f"CPUs, load {res['machine']['loadavg']}")
    for e in res["errors_sample"][:10]:
        print("  error:", e)
    print(res["verdict"]["line"])


def main(argv=None) -> int:
    t_start = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    ap.add_argument("--models-dir", "--model-dir", dest="models_dir", help="folder of prepped models "
                    "(default: the repo's prepped_models/)")
    ap.add_argument("--model", default="fmnist", help="prepped model to serve (default fmnist)")
    ap.add_argument("--think", default="1,3", help="think time between a user's actions, MIN,MAX seconds (default 1,3)")
    ap.add_argument("--mix", default=",".join(f"{k}={w:g}" for k, w in MIX),
                    help="action weights, NAME=W,... over threshold, click, image, reload, target (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-warmup", action="store_true", help="measure from a cold server (no warm-up page load)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--server-log", help="keep the server's whole output (request log, tracebacks) here")
    args = ap.parse_args(argv)
    if args.users < 1 or args.duration <= 0:
        ap.error("--users and --duration must be positive")
    lo, hi = (float(x) for x in args.think.split(","))
    mix = []
    for part in filter(None, args.mix.split(",")):
        k, _, w = part.partition("=")
        if k not in dict(MIX) or not w:
            ap.error(f"--mix: {part!r}: expected NAME=WEIGHT with NAME one of {', '.join(dict(MIX))}")
        if float(w) > 0:
            mix.append((k, float(w)))
    if not mix:
        ap.error("--mix: no action has a positive weight")
    from viscnn.paths import default_models_dir

    mdir = Path(args.models_dir) if args.models_dir else default_models_dir()
    if not (mdir / args.model / "manifest.json").is_file():
        print(f"no prepped model {args.model!r} in {mdir}", file=sys.stderr)
        return 2
    try:
        res = run_load(mdir, args.model, args.users, args.duration, (lo, hi), args.seed, not args.no_warmup, t_start, mix,
                       args.server_log)
    except RuntimeError as e:
        print(f"load.py: {e}", file=sys.stderr)
        return 2
    print_report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0 if res["verdict"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
