"""The one training loop. It knows nothing of any method.

Per step: cut a uint8 batch, build the views on the device (the method's recipe), run
``training_step`` under autocast, back-propagate, clip, step the optimizer with the scheduled lr,
call the method's ``on_step_end`` hook, log. Per epoch: ``on_epoch_start`` hook, optional online
kNN, checkpoint. Everything a resumed run needs is in the checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup import dist
from selfsup.config import TrainConfig
from selfsup.data.loader import BatchLoader
from selfsup.data.views import ViewRecipe
from selfsup.errors import SelfSupError
from selfsup.methods.base import Context, Method
from selfsup.train import checkpoint as ckpt
from selfsup.train.optim import build_optimizer, cosine_schedule, scaled_lr

MAX_BAD_STEPS = 10  # consecutive non-finite losses before the run is stopped


class MetricsLog:
    """Append-only ``metrics.jsonl`` (rank 0 only). On resume, records past the checkpoint go."""

    def __init__(self, path: Path | None, resume_step: int | None = None):
        self.path = path
        if path is None or not dist.is_main():
            self.path = None
            return
        if resume_step is not None and path.exists():
            keep = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")


@dataclass
class FitResult:
    steps: int
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)  # per-epoch records
    timing: dict[str, float] = field(default_factory=dict)  # seconds in data / augmentation / compute


def fit(method: Method, loader: BatchLoader, recipe: ViewRecipe, cfg: TrainConfig, run_dir: str | Path | None = None,
        *, monitor: Callable[[nn.Module], dict[str, float]] | None = None, resume: dict[str, Any] | None = None,
        eval_batches: Callable | None = None, progress: bool = True, config_dict: dict | None = None,
        profile: bool = False) -> FitResult:
    """Train ``method`` for ``cfg.epochs`` epochs over ``loader``; return what happened.

    ``monitor(backbone)`` (e.g. online kNN) runs before training, every ``cfg.knn_every`` epochs
    and at the end. ``resume`` is a checkpoint dict from :func:`selfsup.train.checkpoint.load`.
    ``profile`` synchronizes the device around each phase so the data/augmentation/compute
    split is exact on GPUs (it costs a little throughput).
    """
    device = loader.device
    run_dir = Path(run_dir) if run_dir is not None else None
    if len(loader) < cfg.accumulate:
        raise SelfSupError(f"train.accumulate={cfg.accumulate} exceeds the {len(loader)} batches of an epoch")
    steps_per_epoch = len(loader) // cfg.accumulate  # optimizer steps; a last partial accumulation is dropped
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    global_batch = loader.batch_size * loader.world_size * cfg.accumulate
    peak = scaled_lr(cfg.lr, global_batch, cfg.lr_scaling)
    lr_schedule = cosine_schedule(peak, steps_per_epoch * cfg.epochs, round(cfg.warmup_epochs * steps_per_epoch),
                                  final=cfg.min_lr * peak)
    optimizer = build_optimizer(cfg.optimizer, method, peak, cfg.weight_decay, cfg.momentum)
    model: nn.Module = method
    if dist.is_distributed():
        model = nn.parallel.DistributedDataParallel(method, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1 + dist.rank())

    start_epoch, step, start_batch = 0, 0, 0
    if resume is not None:
        method.load_state_dict(resume["method"])
        optimizer.load_state_dict(resume["optimizer"])
        aug_gen.set_state(resume["aug_generator"])
        ckpt.set_rng_state(resume["rng"])
        start_epoch, step = resume["epoch"], resume["step"]
        start_batch = resume.get("batch_in_epoch", 0)
    log = MetricsLog(run_dir / "metrics.jsonl" if run_dir else None, resume_step=step if resume else None)
    history: list[dict[str, Any]] = []
    timing = {"data": 0.0, "augment": 0.0, "compute": 0.0}
    show = progress and dist.is_main()
    bad_in_a_row = 0
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")

    def sync() -> None:
        if profile and device.type == "cuda":
            torch.cuda.synchronize(device)

    def context(epoch: int) -> Context:
        return Context(epoch=epoch, step=step, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                       epochs=cfg.epochs, device=device, eval_batches=eval_batches, dataset_size=len(loader.dataset),
                       optimizer=optimizer)

    def save(epoch_done: int) -> None:
        if run_dir is None or not dist.is_main():
            return
        state = {"method": method.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch_done,
                 "step": step, "batch_in_epoch": 0, "dataset_size": len(loader.dataset),
                 "aug_generator": aug_gen.get_state(), "rng": ckpt.rng_state(), "config": config_dict or {}}
        ckpt.atomic_save(state, ckpt.checkpoint_path(run_dir, epoch_done))
        ckpt.prune(run_dir, cfg.keep_checkpoints)

    def run_monitor(epoch: int) -> dict[str, float]:
        if monitor is None:
            return {}
        out = {f"knn_{k}": v for k, v in monitor(method.backbone).items() if isinstance(v, float)}
        if dist.is_main():
            log.write({"epoch": epoch, "step": step, **out})
            if show:
                print(f"epoch {epoch}: kNN top-1 {out.get('knn_top1', float('nan')):.2f}%", flush=True)
        return out

    if resume is None:
        run_monitor(0)
    method.train()
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total_steps:
            break
        loader.set_epoch(epoch)
        ctx = context(epoch)
        method.on_epoch_start(ctx)
        from tqdm import tqdm

        bar = tqdm(total=steps_per_epoch * cfg.accumulate, initial=start_batch * cfg.accumulate,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not show, dynamic_ncols=True, leave=False)
        # Per-key counts: hook metrics (ctx.log) arrive once per epoch or per E-step, not every step.
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        micro = 0
        count, t_epoch, images_seen = 0, time.perf_counter(), 0
        t0 = time.perf_counter()
        for images, _labels, index in loader.iter_from(start_batch * cfg.accumulate):
            if step >= total_steps or (micro == 0 and step >= (epoch + 1) * steps_per_epoch):
                break
            sync()
            t1 = time.perf_counter()
            views = recipe(images, aug_gen, index)
            sync()
            t2 = time.perf_counter()
            lr = lr_schedule[step]
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            last_micro = micro + 1 == cfg.accumulate
            # DDP: gradients are all-reduced only on the micro-batch that ends an optimizer step.
            sync_ctx = model.no_sync() if (not last_micro and hasattr(model, "no_sync")) else nullcontext()
            with sync_ctx, torch.autocast(**autocast):
                out = model(views, index)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()):
                bad_in_a_row += 1
                micro = 0
                optimizer.zero_grad(set_to_none=True)
                log.write({"epoch": epoch, "step": step, "skipped_non_finite": bad_in_a_row})
                if bad_in_a_row >= MAX_BAD_STEPS:
                    raise SelfSupError(
                        f"the loss was not finite for {bad_in_a_row} steps in a row (epoch {epoch + 1}, step {step}); "
                        "likely causes: a learning rate too high (train.lr), a temperature too low, or bf16 "
                        "precision (train.precision=fp32). The last good checkpoint is kept."
                    )
                continue
            bad_in_a_row = 0
            with sync_ctx:
                (loss / cfg.accumulate).backward()
            micro += 1
            if micro == cfg.accumulate:
                micro = 0
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                ctx.step = step
                method.on_step_end(ctx)
            sync()
            t3 = time.perf_counter()
            timing["data"] += t1 - t0
            timing["augment"] += t2 - t1
            timing["compute"] += t3 - t2
            images_seen += images.shape[0] * loader.world_size
            values = {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1}
            values.update(ctx.log)
            ctx.log.clear()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            count += 1
            ips = images_seen / max(1e-9, time.perf_counter() - t_epoch)
            if micro == 0 and step % cfg.log_every == 0:
                log.write({"epoch": epoch, "step": step, "lr": lr, **values, "images_per_s": round(ips, 1)})
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.3g}", img_s=f"{ips:.0f}", refresh=False)
            bar.update(1)
            t0 = time.perf_counter()
        bar.close()
        start_batch = 0
        record = {"epoch": epoch + 1, "step": step, **{k: v / counts[k] for k, v in sums.items()},
                  "epoch_time_s": round(time.perf_counter() - t_epoch, 3)}
        if count and not math.isfinite(record.get("loss", 0.0)):
            raise SelfSupError(f"epoch {epoch + 1}: mean loss is not finite")
        finished = epoch + 1 == cfg.epochs or step >= total_steps
        if monitor is not None and (finished or (cfg.knn_every and (epoch + 1) % cfg.knn_every == 0)):
            record.update(run_monitor(epoch + 1))
        history.append(record)
        log.write({"type": "epoch", **record})
        if show:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "step"))
            print(f"epoch {epoch + 1}/{cfg.epochs}: {shown}", flush=True)
        if finished or (epoch + 1) % cfg.checkpoint_every == 0:
            save(epoch + 1)
        method.train()
    return FitResult(steps=step, epochs=epoch + 1, history=history, timing=timing)
