"""Run a function on several CPU processes joined by a gloo process group, for tests.

    from distributed import run_distributed

    def _work(rank, world_size, x):          # module level, so spawned children can import it
        ...
        return some_picklable_result

    results = run_distributed(_work, 2, x)    # [result of rank 0, result of rank 1]

Children start as fresh interpreters (the "forkserver" method where available, else "spawn"; no
torch state is inherited from the test process, as under torchrun), join
``tcp://127.0.0.1:<free port>``, and send back their return value or their traceback through a
file each. A failing or hanging rank makes the call raise instead of hanging the test session:
the other ranks are killed, and the error names the rank and carries its traceback.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import pickle
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["DistributedRunError", "run_distributed", "free_port"]

# Another process can take the port between free_port() and the rendezvous binding it.
_PORT_CLASH = ("address already in use", "eaddrinuse", "errno 98")


class DistributedRunError(RuntimeError):
    """A rank raised, crashed or timed out; the message has every failing rank's traceback."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn: Callable[..., Any], rank: int, world_size: int, port: int, backend: str, threads: int,
           timeout: float, out_stem: str, args: tuple[Any, ...]) -> None:
    # Top-level so "spawn" can pickle it. Threads are capped because tests share few cores.
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    outcome: tuple[str, Any]
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout))
        try:
            outcome = ("ok", fn(rank, world_size, *args))
        finally:
            dist.destroy_process_group()
    except BaseException:
        # Everything, KeyboardInterrupt and SystemExit included, must reach the parent.
        outcome = ("error", traceback.format_exc())
    try:
        payload = pickle.dumps(outcome)
    except Exception:
        outcome = ("error", "result could not be pickled:\n" + traceback.format_exc())
        payload = pickle.dumps(outcome)
    path = out_stem + (".ok" if outcome[0] == "ok" else ".err")
    with open(path + ".tmp", "wb") as f:
        f.write(payload)
    # Atomic rename: the parent never sees a half-written file.
    os.replace(path + ".tmp", path)


def _context() -> mp.context.BaseContext:
    """A fresh-interpreter start method: "forkserver" where available, else "spawn".

    Importing torch takes seconds on a loaded machine. The fork server imports it once and forks
    every later child from that clean, single-threaded process, so only the first run pays for
    it; "spawn" would re-import torch in every child of every run.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Only takes effect if this process's fork server has not been started yet.
        ctx.set_forkserver_preload(["torch", "torch.distributed"])
        return ctx
    return mp.get_context("spawn")


def _stop(procs: list[mp.process.BaseProcess]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)


def _attempt(fn: Callable[..., Any], world_size: int, args: tuple[Any, ...], backend: str, timeout: float,
             threads: int) -> list[Any]:
    ctx = _context()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="selfsup-dist-") as tmp:
        stems = [os.path.join(tmp, f"rank{r}") for r in range(world_size)]
        # Not daemonic: a rank may itself start processes (e.g. DataLoader workers); _stop
        # reaps them instead.
        procs = [ctx.Process(target=_child, args=(fn, r, world_size, port, backend, threads, timeout,
                                                   stems[r], args))
                 for r in range(world_size)]
        timed_out = False
        try:
            for p in procs:
                p.start()
            deadline = time.monotonic() + timeout
            while any(p.is_alive() for p in procs):
                # A rank that died or reported an error leaves its peers blocked in a collective:
                # stop waiting for them.
                if any(p.exitcode not in (None, 0) for p in procs) or any(
                        os.path.exists(stem + ".err") for stem in stems):
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.02)
        finally:
            _stop(procs)

        results, errors = [], []
        for r, (p, stem) in enumerate(zip(procs, stems)):
            if os.path.exists(stem + ".err"):
                errors.append(f"rank {r} raised:\n{_read(stem + '.err')}")
            elif os.path.exists(stem + ".ok"):
                results.append(_read(stem + ".ok"))
            else:
                why = f"timed out after {timeout:.0f} s" if timed_out else f"exit code {p.exitcode}"
                errors.append(f"rank {r}: no result ({why})")
        if errors:
            name = getattr(fn, "__name__", repr(fn))
            raise DistributedRunError(f"run_distributed({name}, world_size={world_size}) failed:\n"
                                      + "\n".join(errors))
        return results


def _read(path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)[1]


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo",
                    timeout: float = 120.0, threads: int = 1, retries: int = 2) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes that share a
    process group, and return the ranks' return values in rank order.

    ``fn`` and ``args`` must be picklable (``fn`` defined at module level); return values are
    pickled back, so tensors are fine. The process group is created before ``fn`` runs and
    destroyed after it returns or raises. ``timeout`` (seconds) bounds the whole run and every
    collective; ``threads`` is each rank's torch thread count. If the rendezvous port was taken
    in the meantime the run is retried on a new port up to ``retries`` times. Raises
    ``DistributedRunError`` if any rank raises, crashes or does not finish in time.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    for attempt in range(retries + 1):
        try:
            return _attempt(fn, world_size, args, backend, timeout, threads)
        except DistributedRunError as e:
            if attempt == retries or not any(s in str(e).lower() for s in _PORT_CLASH):
                raise
    raise AssertionError("unreachable")
