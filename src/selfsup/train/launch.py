"""Joining a torchrun process group, or starting one on this machine (``--devices N``).

``torchrun --nproc-per-node N -m selfsup pretrain ...`` sets WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; :func:`init_from_env` joins that group (NCCL when CUDA is available,
gloo otherwise). ``selfsup pretrain --devices N`` does what torchrun would do on one machine:
start N copies of the same command with those variables set, and wait for all of them.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from selfsup.errors import SelfSupError


def init_from_env() -> bool:
    """Join the process group described by torchrun's variables; False when there is none."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise SelfSupError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    # Leave the group before the interpreter shuts down: a process that exits with it alive can
    # abort in c10d's teardown ("terminate called without an active exception", exit 250).
    atexit.register(_leave)
    return True


def _leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_local(n: int, argv: list[str]) -> int:
    """Run ``python -m selfsup *argv`` as ``n`` ranks on this machine; the first failure stops all."""
    if n < 1:
        raise SelfSupError(f"--devices must be at least 1, got {n}")
    if torch.cuda.is_available() and n > torch.cuda.device_count():
        raise SelfSupError(f"--devices {n} but only {torch.cuda.device_count()} GPUs are visible")
    port = str(_free_port())
    procs = []
    for rank in range(n):
        env = dict(os.environ, WORLD_SIZE=str(n), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(n),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-m", "selfsup", *argv], env=env))
    code = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed:
                code = failed[0]
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        code = 130
    finally:
        if code:  # one rank failed or we were interrupted: the others cannot finish alone
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
    return code or next((p.returncode for p in procs if p.returncode), 0)
