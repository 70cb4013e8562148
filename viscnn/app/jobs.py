"""Long model runs of the app (a target over hundreds of images, a mean-map pass...) as keyed jobs on a
small thread pool inside the server process, polled by the page for their progress.

Why not Dash's background callbacks: their DiskcacheManager forks a process per run; a fork of a
process whose PyTorch has already run parallel ops hangs in its first parallel op (libgomp is not
fork-safe), and the child cannot reuse the server's loaded models and datasets anyway. A thread shares
them, and PyTorch releases the GIL inside its ops, so the server keeps answering meanwhile.

A job is keyed by what it computes: asking again for a running or finished key returns that job
instead of starting a second one (two users asking for the same circuit share one run).
"""

from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from viscnn.errors import ViscnnError

KEEP_FINISHED_S = 600.0  # how long a finished job's outcome stays readable
MAX_JOBS = 256


@dataclass
class Job:
    key: str
    done: int = 0
    total: int = 0
    finished: bool = False
    error: Optional[str] = None
    started: float = field(default_factory=time.monotonic)
    ended: Optional[float] = None

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = int(done), int(total)

    def status(self) -> dict:
        return {"key": self.key, "done": self.done, "total": self.total, "finished": self.finished,
                "error": self.error, "seconds": round((self.ended or time.monotonic()) - self.started, 2)}


class Jobs:
    def __init__(self, workers: int = 2):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="viscnn-job")
        self._jobs: Dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, key: str, fn: Callable[[Callable[[int, int], None]], None], force: bool = False) -> Job:
        """Start ``fn(progress)`` for ``key`` unless that job is running, or finished without an error
        (``force``: rerun a finished one, e.g. when the value it made has been dropped since)."""
        with self._lock:
            self._prune()
            job = self._jobs.get(key)
            if job is not None and (not job.finished or (job.error is None and not force)):
                return job
            job = self._jobs[key] = Job(key)
        self._pool.submit(self._run, job, fn)
        return job

    def get(self, key: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(key)

    def _run(self, job: Job, fn) -> None:
        try:
            fn(job.progress)
        except ViscnnError as e:
            job.error = str(e)
        except Exception as e:  # keep serving; say what went wrong
            job.error = f"model run failed: {type(e).__name__}: {e}"
            traceback.print_exc()
        finally:
            job.ended = time.monotonic()
            job.finished = True

    def _prune(self) -> None:
        now = time.monotonic()
        old = [k for k, j in self._jobs.items() if j.finished and now - (j.ended or now) > KEEP_FINISHED_S]
        for k in old:
            del self._jobs[k]
        while len(self._jobs) > MAX_JOBS:
            k = next((k for k, j in self._jobs.items() if j.finished), None)
            if k is None:
                break
            del self._jobs[k]
