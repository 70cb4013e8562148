"""Which node score tracks real channel removal? (issue 12, item 4)

Ground truth, per conv channel: ``mean_images |target(channel zeroed) - target(full)|`` — the
per-image |Δ| mean, the quantity the Taylor node score ``mean_images |Σ_p g·h|`` estimates
(a Δ of the *mean* would let opposite per-image changes cancel; it is reported as ``|Δmean|``
for reference only). Two removals: zero the conv output (``conv``) and zero the map the next
layers see, after BN+ReLU (``post``). Candidates are compared by Spearman per conv layer and
over all conv nodes.

  .venv/bin/python benchmarks/node_scores.py [--images fmnist:test:Sneaker:200] [--targets loss,class:Sneaker,class:Shirt]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from scipy.stats import spearmanr

from viscnn.data import open_images
from viscnn.graph import build_graph
from viscnn.importance.accumulate import compute_scores
from viscnn.importance.node_scores import exact_removal, node_scores_from_kernels, replacement_taylor
from viscnn.model_spec import load_model

ROOT = Path(__file__).resolve().parents[1]


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])


def evaluate(graph, truth: np.ndarray, cands: Dict[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
    """{candidate: {layer name | 'all': Spearman vs truth}} over conv nodes."""
    convs = graph.conv_layers()
    idx = np.concatenate([np.arange(l.node_offset, l.node_offset + l.channels) for l in convs])
    out = {}
    for name, s in cands.items():
        row = {l.name: _rho(s[l.node_offset:l.node_offset + l.channels], truth[l.node_offset:l.node_offset + l.channels])
               for l in convs}
        row["all"] = _rho(s[idx], truth[idx])
        out[name] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="fmnist:test:Sneaker:200")
    ap.add_argument("--targets", default="loss,class:Sneaker,class:Shirt")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    man = json.loads((ROOT / "prepped_models/fmnist/manifest.json").read_text())
    model = load_model("fmnist").eval()
    graph = build_graph(model, (28, 28), in_channels=1, include_classes=True)
    classes = man["classes"]
    batches = list(open_images(args.images, (1, 28, 28)).batches(64, (1, 28, 28), man["normalize"]))
    print(f"{args.images}: {sum(len(x) for x, _ in batches)} images; model has BatchNorm after every conv:",
          all(hasattr(model, f"bn{i}") for i in range(1, 5)))
    results = {}
    for target in args.targets.split(","):
        t0 = time.perf_counter()
        sc = compute_scores(model, graph, target, batches, ("taylor",), classes=classes)
        tay_n, tay_e = sc["taylor"]
        t_taylor = time.perf_counter() - t0
        t0 = time.perf_counter()
        rep = replacement_taylor(model, graph, target, batches, classes=classes)
        t_rep = time.perf_counter() - t0
        cands = {
            "(a) node taylor (today)": tay_n,
            "(b) in-kernel taylor sum": node_scores_from_kernels(graph, tay_e, "in_sum"),
            "(b') in-kernel taylor mean": node_scores_from_kernels(graph, tay_e, "in_mean"),
            "(c) out-kernel taylor sum": node_scores_from_kernels(graph, tay_e, "out_sum"),
            "(d1) taylor post-BN |Σg·bn|": replacement_taylor(model, graph, target, batches, classes=classes,
                                                             replace="zero", chain_len=1),
            "(d2) taylor post-act |Σg·a|": replacement_taylor(model, graph, target, batches, classes=classes,
                                                             replace="zero"),
            "(f) replacement taylor |Σg·(a-f(0))|": rep,
        }
        gt_conv, cost = exact_removal(model, graph, target, batches, "conv", classes=classes)
        gt_post, cost_p = exact_removal(model, graph, target, batches, "post", classes=classes)
        dmean, _ = exact_removal(model, graph, target, batches, "conv", classes=classes, signed=True)
        cands["(e) exact removal at post"] = gt_post
        cands["(e') exact removal at conv"] = gt_conv
        cands["|Δmean| (conv zeroing)"] = np.abs(dmean)
        res = {"vs conv zeroing": evaluate(graph, gt_conv, cands),
               "vs post zeroing": evaluate(graph, gt_post, cands),
               "cost_s": {"taylor (compute_scores)": t_taylor, "replacement taylor": t_rep,
                          "exact removal conv": cost["seconds"], "forwards": cost["forwards"]}}
        results[target] = res
        layers = [l.name for l in graph.conv_layers()] + ["all"]
        for truth in ("vs conv zeroing", "vs post zeroing"):
            print(f"\n## target {target}: Spearman {truth} (per-image |Δ| mean)")
            print(f"| score | {' | '.join(layers)} |\n|---|{'---|' * len(layers)}")
            for name, row in res[truth].items():
                print(f"| {name} | " + " | ".join(f"{row[l]:+.3f}" for l in layers) + " |")
        print(f"cost: compute_scores taylor {t_taylor:.2f} s, replacement taylor {t_rep:.2f} s, "
              f"exact removal {cost['seconds']:.2f} s ({cost['forwards']} forwards)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
