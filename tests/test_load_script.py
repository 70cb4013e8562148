"""benchmarks/load.py end to end, briefly: 2 simulated users for 5 s against a real server on the
default model; every request kind it ran was counted, nothing failed, the JSON has its fields."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from app_fixture import default_model

REPO = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("viscnn_load_bench", REPO / "benchmarks" / "load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_load_script_short_run(tmp_path):
    mdir, name = default_model()
    load = _load_script()
    out = tmp_path / "load.json"
    t = time.monotonic()
    rc = load.main(["--users", "2", "--duration", "5", "--think", "0.2,0.6", "--seed", "1",
                    "--models-dir", str(mdir), "--model", name, "--json", str(out)])
    took = time.monotonic() - t
    assert rc in (0, 1), rc  # 1: a latency goal missed on a busy machine; errors are checked below
    assert took <= 5 + load.HARD_MARGIN_S, took
    r = json.loads(out.read_text())
    for key in ("model", "users", "duration_s", "requests", "actions", "totals", "server", "verdict", "errors_sample"):
        assert key in r, key
    assert r["model"] == name and r["users"] == 2
    for key in ("requests", "errors", "failed_actions", "unfinished_at_end", "callbacks"):
        assert key in r["totals"], key
    for key in ("rss_peak_mb", "rss_start_mb", "rss_end_mb", "cpu_s"):
        assert key in r["server"], key
    assert r["server"]["rss_peak_mb"] > 0 and r["server"]["rss_samples"] > 0
    assert {"ok", "zero_errors", "threshold_p95_ok", "line"} <= set(r["verdict"])
    reqs, acts = r["requests"], r["actions"]
    for table in (reqs, acts):
        for kind, row in table.items():
            assert row["count"] > 0, kind
            assert {"errors", "p50_ms", "p95_ms", "max_ms"} <= set(row), kind
            assert row["p50_ms"] <= row["p95_ms"] <= row["max_ms"], (kind, row)
    for kind in ("page", "layout", "dependencies", "asset"):
        assert kind in reqs, sorted(reqs)
    assert any(k.startswith("cb ") for k in reqs) and any(k.startswith("img ") for k in reqs), sorted(reqs)
    assert "action load" in acts and len(acts) >= 3, sorted(acts)
    assert r["totals"]["requests"] == sum(row["count"] for row in reqs.values()) > 0
    errors = r["totals"]["errors"] + r["totals"]["failed_actions"]
    assert errors == 0, r["errors_sample"]
    assert r["verdict"]["zero_errors"]
