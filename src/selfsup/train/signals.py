"""Preemption: SIGTERM/SIGINT ask the trainer to save and stop at the next step boundary.

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before killing a job.
The first signal only sets a flag: the trainer finishes the step in flight, writes a checkpoint
and raises :class:`selfsup.errors.Preempted`. A second signal means "now": it raises
``KeyboardInterrupt`` at once, without a checkpoint. Handlers can only be installed from the
main thread; elsewhere (a notebook's worker thread, a library caller's thread) this is a no-op.
The previous handlers are restored on exit.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionHandler:
    """Context manager; ``requested`` holds the name of the first signal received, or None."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: str | None = None
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            # A forked loader worker (schedulers signal the whole process group): it keeps
            # serving batches so the main process can reach the step boundary and save.
            return
        name = signal.Signals(signum).name
        if self.requested is not None:
            self.restore()
            raise KeyboardInterrupt(f"second signal ({name}): stopping at once, without a checkpoint")
        self.requested = name
        print(f"\nselfsup: {name} received; saving a checkpoint after the current step, then stopping "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> PreemptionHandler:
        if self.enabled:
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)  # None: set outside Python
        self._previous.clear()

    def __exit__(self, *exc) -> None:
        self.restore()
