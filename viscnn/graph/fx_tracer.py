"""A torch.fx Tracer that is safe in a threaded server.

While ``fx.Tracer.trace`` runs, it patches ``nn.Module.__call__`` and ``__getattr__`` for the whole
process, so a model that another thread runs meanwhile goes through the tracer and fails
(``NameError: module is not installed as a submodule``); two traces at once can even restore the
patches in the wrong order and leave every later model call broken. :class:`ThreadSafeTracer` lets
calls from other threads through untouched, and traces one at a time (a process-wide lock).
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional

import torch.fx as fx
from torch import nn

_TRACE_LOCK = threading.RLock()


class ThreadSafeTracer(fx.Tracer):
    _owner: Optional[int] = None

    def trace(self, root, concrete_args=None):  # type: ignore[override]
        with _TRACE_LOCK:
            prev, self._owner = self._owner, threading.get_ident()
            try:
                return super().trace(root, concrete_args)
            finally:
                self._owner = prev

    def _foreign(self) -> bool:
        return threading.get_ident() != self._owner

    def call_module(self, m: nn.Module, forward, args, kwargs) -> Any:
        if self._foreign():  # another thread running its own model: the plain call
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: Dict[str, Any]) -> Any:
        if self._foreign():
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)
