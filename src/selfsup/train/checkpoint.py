"""Checkpoints: written atomically, loaded with ``weights_only=True``, resumed exactly.

A checkpoint is a plain dict of tensors and Python scalars/containers, which is what
``torch.load(weights_only=True)`` accepts; nothing in it can execute code when loaded.

Names: ``checkpoints/epoch-0003.pt`` after 3 whole epochs; ``epoch-0003-step-00000130.pt`` inside
the 4th epoch at optimizer step 130 (``train.checkpoint_every_steps`` or a preemption). The newest
is the one with the largest (epoch, step). ``best.pt`` beside them is the state with the best
online kNN top-1 so far; it is never pruned and never resumed from.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.errors import SelfSupError

_NAME = re.compile(r"epoch-(\d+)(?:-step-(\d+))?\.pt$")


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a file that fails is reported, not executed."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise SelfSupError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, foreign pickle, refused global...
        raise SelfSupError(f"checkpoint {path} cannot be loaded safely ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); it is truncated, corrupt, or not a "
                           "selfsup checkpoint") from None
    if not isinstance(state, dict):
        raise SelfSupError(f"checkpoint {path} holds a {type(state).__name__}, not a selfsup checkpoint (a dict)")
    return state


def checkpoint_path(run_dir: str | Path, epoch: int, step: int | None = None) -> Path:
    """The path of the checkpoint after ``epoch`` whole epochs, or inside the next one at ``step``."""
    name = f"epoch-{epoch:04d}" + (f"-step-{step:08d}" if step is not None else "")
    return Path(run_dir) / "checkpoints" / f"{name}.pt"


def best_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / "best.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run (epoch ends and mid-epoch), newest first; ``best.pt`` is not listed."""
    d = Path(run_dir) / "checkpoints"
    found = [((int(m.group(1)), int(m.group(2) or -1)), p) for p in d.glob("epoch-*.pt") if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


RESUME_KEYS = ("method", "optimizer", "epoch", "step", "aug_generator", "rng")


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu",
                required: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path]:
    """The newest checkpoint that loads and has the ``required`` keys; a broken newer one (cut
    short by a crash, corrupt, of another format) is reported and the previous one used."""
    import warnings

    paths = list_checkpoints(run_dir)
    if not paths:
        raise SelfSupError(f"{run_dir}: no checkpoints to resume from (checkpoints/epoch-*.pt)")
    for p in paths:
        try:
            state = load(p, map_location)
            if missing := [k for k in required if k not in state]:
                raise SelfSupError(f"checkpoint {p} lacks {', '.join(missing)}; not a selfsup training checkpoint")
            return state, p
        except SelfSupError as e:
            warnings.warn(f"{e}; falling back to an earlier checkpoint", stacklevel=2)
    raise SelfSupError(f"{run_dir}: none of the {len(paths)} checkpoints could be loaded")


def prune(run_dir: str | Path, keep: int) -> None:
    for p in list_checkpoints(run_dir)[keep:]:
        p.unlink(missing_ok=True)


def training_state(method: torch.nn.Module, optimizer: torch.optim.Optimizer, aug_gen: torch.Generator, *,
                   epoch: int, step: int, batch_in_epoch: int, loop: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Everything a run depends on, as one checkpoint dict: the whole ``state_dict`` of the method
    (buffers included), the optimizer, every RNG, the position (``epoch`` whole epochs done, then
    ``batch_in_epoch`` loader batches of the next, ``step`` optimizer steps) and the loop's own
    counters (``loop``)."""
    return {"method": method.state_dict(), "optimizer": optimizer.state_dict(), "aug_generator": aug_gen.get_state(),
            "rng": rng_state(), "epoch": epoch, "step": step, "batch_in_epoch": batch_in_epoch, "loop": loop, **extra}


def restore_training(state: dict[str, Any], method: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     aug_gen: torch.Generator) -> tuple[int, int, int, dict[str, Any]]:
    """Load a :func:`training_state` back; return ``(epoch, step, batch_in_epoch, loop)``."""
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    aug_gen.set_state(state["aug_generator"])
    set_rng_state(state["rng"])
    return state["epoch"], state["step"], state.get("batch_in_epoch", 0), state.get("loop", {})


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
