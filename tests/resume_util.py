"""Exact resume, checked the same way for every method: stop a run at a step, resume it, compare.

``assert_resume_exact(overrides, tmp_path)`` trains a tiny run straight through, then the same run
again stopped by a SIGTERM that the method itself sends from ``on_step_end`` at a chosen step (so
the stop lands at an exact step boundary, mid-epoch by default), resumes it from its checkpoint,
and asserts that both runs wrote the same metrics (every step's loss and logged values) and end
with identical weights and buffers (EMA copies, queues, banks, prototypes, cluster state).
Add a method by adding its overrides to ``RESUME_CASES``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from pathlib import Path

import pytest
import torch

from selfsup.config import load_config
from selfsup.errors import Preempted
from selfsup.methods import METHODS
from selfsup.train import checkpoint as ckpt
from selfsup.train.pretrain import pretrain

# 192 images in batches of 64: 3 optimizer steps per epoch, 2 epochs.
BASE = ["data.subset=192", "data.image_size=16", "views.size=16", "model.width=0.125", "train.batch_size=64",
        "train.epochs=2", "train.warmup_epochs=0", "train.log_every=1", "train.collapse_every=1",
        "train.deterministic=true", "train.checkpoint_every=1", "train.keep_checkpoints=3", "eval.knn_k=10"]

RESUME_CASES = {
    "simclr": ["method.name=simclr", "method.hidden_dim=64", "method.projection_dim=32"],
    "moco_v1": ["method.name=moco_v1", "method.queue_size=128"],  # queue
    "byol": ["method.name=byol", "method.hidden_dim=64", "method.projection_dim=32"],  # EMA target
    "swav": ["method.name=swav", "method.hidden_dim=64", "method.projection_dim=32", "method.num_prototypes=10",
             "method.freeze_prototypes_iters=2", "method.queue_length=128", "method.queue_start_epoch=1"],
    "instdisc": ["method.name=instdisc"],  # memory bank
    "deepcluster": ["method.name=deepcluster", "method.num_clusters=5", "method.pca_dim=8"],  # cluster state
    # Labels relabelled at steps 0, 2, 3 (an epoch start) and 4: inside epochs and at a boundary.
    "sela": ["method.name=sela", "method.num_clusters=5", "method.num_heads=2", "method.label_updates_per_epoch=2"],
}

TIMING_KEYS = ("images_per_s", "epoch_time_s")


def _records(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if k not in TIMING_KEYS})
    return out


def _stopping_at(cls: type, stop_step: int) -> type:
    """``cls`` that sends its own process a SIGTERM right after optimizer step ``stop_step``."""

    class Stopping(cls):
        def on_step_end(self, ctx):
            super().on_step_end(ctx)
            if ctx.step == stop_step:
                os.kill(os.getpid(), signal.SIGTERM)

    return Stopping


def assert_resume_exact(overrides: list[str], tmp_path: Path, stop_step: int | None = None,
                        seed: int = 0) -> None:
    """Stop at ``stop_step`` (default: a random mid-epoch step drawn from ``seed``), resume, compare."""
    assert threading.current_thread() is threading.main_thread(), "signal handlers need the main thread"
    args = BASE + list(overrides) + [f"run.dir={tmp_path}"]
    full = pretrain(load_config(None, args + ["run.name=full"]), progress=False)
    steps_per_epoch, total = full.fit.history[0]["step"], full.fit.steps
    if stop_step is None:
        stop_step = random.Random(seed).choice([s for s in range(1, total) if s % steps_per_epoch])
    name = load_config(None, args).method["name"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(METHODS, name, _stopping_at(METHODS[name], stop_step))
        with pytest.raises(Preempted, match="--resume") as stopped:
            pretrain(load_config(None, args + ["run.name=part"]), progress=False)
    state, path = ckpt.load_latest(tmp_path / "part")
    assert stopped.value.step == stop_step and state["step"] == stop_step and str(path) == stopped.value.checkpoint
    assert state["batch_in_epoch"] == (stop_step % steps_per_epoch) * load_config(None, args).train.accumulate
    resumed = pretrain(None, resume_dir=tmp_path / "part", progress=False)
    assert resumed.fit.steps == total
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed at step {stop_step}: {len(different)} tensors differ, e.g. {different[:3]}"
    ra, rb = _records(full.run_dir), _records(resumed.run_dir)
    assert [r.get("loss") for r in ra] == [r.get("loss") for r in rb]
    assert ra == rb
