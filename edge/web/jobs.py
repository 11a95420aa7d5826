"""Long work started from the page (a bulk enrolment), run in a background thread, one at a time.

The page shows a progress bar fed by the enrolment loop itself (edge/enroll.py `enroll_dir`'s progress
callback, the same loop `facegate enroll-dir` runs with its terminal bar) and reloads itself until the job is
done; finished jobs are kept for an hour so their summary can be read.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import FacegateError

log = logging.getLogger("facegate.web")
KEEP_S = 3600.0


@dataclass
class Job:
    id: str
    account: str
    title: str
    total: int = 0
    done: int = 0
    state: str = "running"  # running | done | failed
    result: dict[str, Any] | None = None
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    @property
    def percent(self) -> int:
        return 100 if self.state != "running" else int(100 * self.done / self.total) if self.total else 0


class Jobs:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def running(self) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if j.state == "running"), None)

    def get(self, job_id: str, account: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.account == account else None

    def start(self, account: str, title: str, work: Callable[[Job], dict[str, Any]], scratch: Path) -> Job:
        """Run `work(job)` in a thread; `scratch` (the unpacked upload) is removed when it ends, whatever
        happens."""
        with self._lock:
            now = time.time()
            for k in [k for k, j in self._jobs.items() if j.finished and now - j.finished > KEEP_S]:
                del self._jobs[k]
            if any(j.state == "running" for j in self._jobs.values()):
                shutil.rmtree(scratch, ignore_errors=True)
                raise FacegateError("a bulk enrolment is already running: wait for it to finish")
            job = Job(secrets.token_urlsafe(12), account, title)
            self._jobs[job.id] = job

        def run() -> None:
            try:
                job.result = work(job)
                job.state = "done"
            except FacegateError as exc:
                job.error, job.state = str(exc), "failed"
            except Exception:  # a bug: logged with its traceback, the page says only that it failed
                log.exception("bulk enrolment failed")
                job.error, job.state = "internal error (see the log)", "failed"
            finally:
                job.finished = time.time()
                shutil.rmtree(scratch, ignore_errors=True)

        threading.Thread(target=run, name=f"web-job-{job.id}", daemon=True).start()
        return job
