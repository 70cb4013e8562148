"""Tracing in one thread while other threads run models (the app does both): nothing breaks."""

import threading

import torch
import torchvision.models as tvm

from viscnn.graph import build_graph
from viscnn.graph.build import trace


def test_models_run_while_another_thread_traces():
    torch.manual_seed(0)
    runner = tvm.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = runner(x)
    errors, stop = [], threading.Event()
    orig_call = torch.nn.Module.__call__

    def run():
        while not stop.is_set():
            try:
                with torch.no_grad():
                    torch.testing.assert_close(runner(x), want)
            except Exception as e:  # noqa: BLE001 - collected for the assertion below
                errors.append(repr(e))
                return

    def build():
        try:
            for _ in range(4):
                build_graph(tvm.mobilenet_v2(weights=None), (32, 32))
                trace(tvm.resnet18(weights=None))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    runners = [threading.Thread(target=run) for _ in range(2)]
    tracers = [threading.Thread(target=build) for _ in range(2)]
    for t in runners + tracers:
        t.start()
    for t in tracers:
        t.join()
    stop.set()
    for t in runners:
        t.join()
    assert not errors, errors[:3]
    with torch.no_grad():  # and nothing is left patched
        torch.testing.assert_close(runner(x), want)
    assert torch.nn.Module.__call__ is orig_call
