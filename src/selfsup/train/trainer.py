"""The one training loop. It knows nothing of any method.

Per step: cut a uint8 batch, build the views on the device (the method's recipe), run
``training_step`` under autocast, back-propagate, skip the step if the loss or a gradient is not
finite, clip, step the optimizer with the scheduled lr, call the method's ``on_step_end`` hook,
log. Per epoch: ``on_epoch_start`` hook, optional online kNN, checkpoint.

Everything a resumed run needs is in the checkpoint: the method's whole ``state_dict`` (EMA copies,
queues, banks, prototypes, cluster state are buffers), the optimizer, every RNG, the step (the
schedules are indexed by it), the epoch and the position inside it (``batch_in_epoch``, in loader
batches), the guards' counters and the epoch's running sums. A run stopped at any step boundary
and resumed gives the same losses and weights, bit for bit on CPU in deterministic mode.

Hook contract: ``on_epoch_start`` runs only when an epoch starts from its first batch. A run
resumed in the middle of an epoch does not call it again: the hook's results (cluster labels,
refreshed banks) must be buffers, so they come back with the checkpoint.

A wall-clock budget (``train.budget_minutes``) replaces ``train.epochs``: before its first step
the run probes what a step, an epoch hook, a kNN monitor and a checkpoint cost (:func:`probe`,
which then rewinds everything it touched), plans the optimizer steps that fit
(:func:`selfsup.train.budget.plan_steps`) and lays every schedule on them. At each epoch end until
its first checkpoint it checks the plan against the mean step time so far, and re-plans when the
steps that fit differ (:func:`selfsup.train.budget.recheck`). The plan is saved in every
checkpoint (``loop["plan"]``): a resumed run reuses it and probes nothing.
"""

from __future__ import annotations

import copy
import itertools
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
from selfsup.errors import Preempted, SelfSupError
from selfsup.methods.base import Context, Method
from selfsup.train import budget
from selfsup.train import checkpoint as ckpt
from selfsup.train.guards import MAX_BAD_STEPS, CollapseMonitor, DivergenceGuard, grads_finite
from selfsup.train.optim import build_optimizer, cosine_schedule, relaid, scaled_lr
from selfsup.train.precision import resolve_precision
from selfsup.train.signals import PreemptionHandler

__all__ = ["MAX_BAD_STEPS", "FitResult", "MetricsLog", "fit", "probe"]


class MetricsLog:
    """Append-only ``metrics.jsonl`` (rank 0 only).

    A fresh run starts it empty. A resumed run keeps the first ``keep_lines`` lines (the count its
    checkpoint recorded), or, for checkpoints without that count, the records up to ``resume_step``.
    """

    def __init__(self, path: Path | None, resume_step: int | None = None, keep_lines: int | None = None):
        self.path = path if dist.is_main() else None
        self.lines = 0
        if self.path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.read_text().splitlines() if path.exists() else []
        if keep_lines is not None:
            keep = old[:keep_lines]
        elif resume_step is not None:
            keep = [line for line in old if _step_of(line) <= resume_step]
        else:
            keep = []
        path.write_text("".join(line + "\n" for line in keep))
        self.lines = len(keep)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self.lines += 1


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:  # a line cut short by a crash
        return math.inf


@dataclass
class FitResult:
    steps: int
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)  # per-epoch records
    timing: dict[str, float] = field(default_factory=dict)  # seconds in data / augmentation / compute
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    minutes: float = 0.0  # wall-clock minutes of the run (all its resumed parts), data loading included
    budget_minutes: float | None = None  # train.budget_minutes of a budgeted run
    planned_steps: int | None = None  # the optimizer steps a budgeted run planned


def step_scalars(out: dict[str, Any]) -> dict[str, float]:
    """The step's scalar outputs as floats. With several processes, their mean over the ranks
    (for a per-sample mean, the global batch's value), so that every rank logs the same numbers
    and takes the same decision about a non-finite loss."""
    names = [k for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1]
    if "loss" not in names:
        raise SelfSupError("a method's training_step must return {'loss': scalar tensor, ...}")
    values = torch.stack([out[k].detach().float().reshape(()) for k in names])
    return dict(zip(names, dist.all_reduce_mean(values).tolist()))


PROBE_STEPS = 20  # optimizer steps a budgeted run times before planning (the first 2 untimed)
PROBE_TOTAL_STEPS = 10**9  # the probe's Context.total_steps: far away, so no step-scheduled work falls in it


def probe(method: Method, model: nn.Module, loader: BatchLoader, recipe: ViewRecipe, optimizer: torch.optim.Optimizer,
          aug_gen: torch.Generator, cfg: TrainConfig, context: Callable[[], Context], *,
          save_to: Callable[[], Any] | None, monitor_s: float, started_at: float,
          autocast: dict[str, Any], sync: Callable[[], None]) -> budget.Costs:
    """Measure what a budgeted run's parts cost, then rewind everything the measuring touched.

    Times one ``on_epoch_start`` call (with ``context()``, at the method's ``hook_probe_epoch``),
    :data:`PROBE_STEPS` optimizer steps at lr 0 from the start of the data order (over several
    epochs if one is shorter, epoch turns included; the first two are warm-up and not timed) and
    one checkpoint save (``save_to()``, which writes one to a scratch path and deletes it).
    ``monitor_s`` (the epoch-0 kNN monitor, timed by the caller) and the time since ``started_at``
    are taken as they are. Then the method's whole state, the optimizer, the augmentation
    generator, every RNG and the loader's position are put back as they were, so that the run
    starts exactly as an unbudgeted one would. These are this process's costs: see
    :func:`mean_over_ranks`.
    """
    sync()
    saved = {"method": {k: v.clone() for k, v in method.state_dict().items()},
             "optimizer": copy.deepcopy(optimizer.state_dict()), "aug": aug_gen.get_state(), "rng": ckpt.rng_state(),
             "epoch": loader.epoch, "failed": set(loader.failed), "training": method.training}
    batches_per_epoch = len(loader) // cfg.accumulate * cfg.accumulate
    n, warm = PROBE_STEPS, 2

    def epochs_of_batches():
        for epoch in itertools.count():
            loader.set_epoch(epoch)
            yield from itertools.islice(loader.iter_from(0), batches_per_epoch)

    batches = None
    try:
        ctx = context()
        loader.set_epoch(0)
        t = time.perf_counter()
        method.on_epoch_start(ctx)
        sync()
        hook_s = time.perf_counter() - t
        method.train()
        optimizer.zero_grad(set_to_none=True)
        batches = epochs_of_batches()
        t = time.perf_counter()
        for i in range(n):
            if i == warm:
                sync()
                t = time.perf_counter()
            for g in optimizer.param_groups:
                g["lr"] = 0.0
            for micro in range(cfg.accumulate):
                images, _labels, index = next(batches)
                views = recipe(images, aug_gen, index)
                last = micro + 1 == cfg.accumulate
                sync_ctx = model.no_sync() if (not last and hasattr(model, "no_sync")) else nullcontext()
                with sync_ctx, torch.autocast(**autocast):
                    out = model(views, index)
                step_scalars(out)
                with sync_ctx:
                    (out["loss"] / cfg.accumulate).backward()
            if grads_finite(method.parameters()):
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ctx.step += 1
            method.on_step_end(ctx)
        sync()
        step_s = (time.perf_counter() - t) / (n - warm)
        checkpoint_s = 0.0
        if save_to is not None:
            t = time.perf_counter()
            save_to()
            checkpoint_s = time.perf_counter() - t
    finally:
        if batches is not None:
            batches.close()
        method.load_state_dict(saved["method"])
        optimizer.load_state_dict(saved["optimizer"])
        optimizer.zero_grad(set_to_none=True)
        aug_gen.set_state(saved["aug"])
        ckpt.set_rng_state(saved["rng"])
        loader.set_epoch(saved["epoch"])
        loader.failed = saved["failed"]
        method.train(saved["training"])
    return budget.Costs(step_s=step_s, epoch_hook_s=hook_s, monitor_s=monitor_s, checkpoint_s=checkpoint_s,
                        fixed_s=time.perf_counter() - started_at)


def mean_over_ranks(costs: budget.Costs, device: torch.device) -> budget.Costs:
    """The ranks' mean costs, so that every rank plans the same steps; a checkpoint costs what it
    costs rank 0, the only one that saves (the others wait for it). Identity on one process."""
    if not dist.is_distributed():
        return costs
    values = [costs.step_s, costs.epoch_hook_s, costs.monitor_s, costs.checkpoint_s, costs.fixed_s]
    total = dist.all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()
    mean = [v / dist.world_size() for v in total]
    return budget.Costs(step_s=mean[0], epoch_hook_s=mean[1], monitor_s=mean[2], checkpoint_s=total[3],
                        fixed_s=mean[4])


def rechecked(trained_s: float, steps: int, elapsed_s: float, device: torch.device) -> tuple[float, float]:
    """``(seconds per step so far, seconds into the run)`` for a budgeted run's re-check: the ranks'
    means, so that every rank re-plans alike."""
    out = (trained_s / max(1, steps), elapsed_s)
    if dist.is_distributed():
        out = tuple(dist.all_reduce_mean(torch.tensor(out, dtype=torch.float64, device=device)).tolist())
    return out


def fit(method: Method, loader: BatchLoader, recipe: ViewRecipe, cfg: TrainConfig, run_dir: str | Path | None = None,
        *, monitor: Callable[[nn.Module], dict[str, float]] | None = None, resume: dict[str, Any] | None = None,
        eval_batches: Callable | None = None, progress: bool = True, config_dict: dict | None = None,
        profile: bool = False, handle_signals: bool = True, started_at: float | None = None) -> FitResult:
    """Train ``method`` for ``cfg.epochs`` epochs over ``loader`` (or, with ``cfg.budget_minutes``,
    for the steps that fit the budget); return what happened.

    ``monitor(backbone)`` (e.g. online kNN) runs before training, every ``cfg.knn_every`` epochs
    and at the end; the state with the best ``top1`` is kept as ``checkpoints/best.pt``. ``resume``
    is a checkpoint dict from :func:`selfsup.train.checkpoint.load`. ``profile`` synchronizes the
    device around each phase so the data/augmentation/compute split is exact on GPUs (it costs a
    little throughput). With ``handle_signals`` (main thread only), SIGTERM/SIGINT save a
    checkpoint at the next step boundary and raise :class:`selfsup.errors.Preempted`.
    ``started_at`` (a ``time.perf_counter()`` value, default: now) is when the run began: a
    budget counts the time spent before ``fit`` too.
    """
    started_at = time.perf_counter() if started_at is None else started_at
    device = loader.device
    run_dir = Path(run_dir) if run_dir is not None else None
    if len(loader) < cfg.accumulate:
        raise SelfSupError(f"train.accumulate={cfg.accumulate} exceeds the {len(loader)} batches of an epoch")
    steps_per_epoch = len(loader) // cfg.accumulate  # optimizer steps; a last partial accumulation is dropped
    batches_per_epoch = steps_per_epoch * cfg.accumulate
    # The run's length; a budgeted run sets it once it has measured itself (below).
    epochs, run_steps = cfg.epochs, steps_per_epoch * cfg.epochs
    total_steps = run_steps if cfg.max_steps is None else min(run_steps, cfg.max_steps)
    global_batch = loader.batch_size * loader.world_size * cfg.accumulate
    loader.reorder = getattr(method, "epoch_order", None)  # a method may sample its own epoch (DeepCluster)
    peak = scaled_lr(cfg.lr, global_batch, cfg.lr_scaling)
    optimizer = build_optimizer(cfg.optimizer, method, peak, cfg.weight_decay, cfg.momentum)
    model: nn.Module = method
    if dist.is_distributed():
        model = nn.parallel.DistributedDataParallel(method, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    # Seeded alike on every process: each draws the global batch's parameters, keeps its slice.
    aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 1)
    guard = DivergenceGuard()
    collapse = CollapseMonitor(cfg.collapse_every)

    start_epoch, step, batch, loop = 0, 0, 0, {}  # batch: loader batches done in the current epoch
    if resume is not None:
        start_epoch, step, batch, loop = ckpt.restore_training(resume, method, optimizer, aug_gen)
        if "guard" in loop:
            guard.load_state_dict(loop["guard"])
    sums: dict[str, float] = dict(loop.get("epoch_sums", {}))  # running sums of the current epoch's values
    # Per-key counts: hook metrics (ctx.log) arrive once per epoch or per E-step, not every step.
    counts: dict[str, int] = dict(loop.get("epoch_counts", {}))
    count: int = loop.get("epoch_count", 0)
    best: float | None = loop.get("best_knn_top1")  # best online kNN top-1 so far
    plan: dict[str, Any] | None = loop.get("plan")  # a budgeted run's plan, fixed before its first step
    elapsed_before = loop.get("elapsed_s", 0.0)  # seconds the run's earlier parts took (before a resume)
    if cfg.budget_minutes is not None and resume is not None and plan is None:
        raise SelfSupError("train.budget_minutes is set but the checkpoint holds no budget plan (it was saved by "
                           "a run without a budget); resume it without train.budget_minutes")
    keep_lines = loop.get("metrics_lines")
    log = MetricsLog(run_dir / "metrics.jsonl" if run_dir else None, step if resume else None, keep_lines)
    history: list[dict[str, Any]] = []
    timing = {"data": 0.0, "augment": 0.0, "compute": 0.0}
    show = progress and dist.is_main()
    precision = resolve_precision(cfg.precision, device)[0]  # "auto" from callers that skip pretrain
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    preempt = PreemptionHandler(handle_signals)

    def sync() -> None:
        if profile and device.type == "cuda":
            torch.cuda.synchronize(device)

    def context(epoch: int) -> Context:
        return Context(epoch=epoch, step=step, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                       epochs=epochs, device=device, eval_batches=eval_batches, dataset_size=len(loader.dataset),
                       optimizer=optimizer)

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - started_at

    def save(epochs_done: int, path: Path | None = None, prune: bool = True) -> Path | None:
        if run_dir is None or not dist.is_main():
            return None
        loop = {"guard": guard.state_dict(), "epoch_sums": dict(sums), "epoch_counts": dict(counts),
                "epoch_count": count, "best_knn_top1": best, "metrics_lines": log.lines, "elapsed_s": elapsed()}
        if plan is not None:
            loop["plan"] = plan
        state = ckpt.training_state(method, optimizer, aug_gen, epoch=epochs_done, step=step, batch_in_epoch=batch,
                                    loop=loop, dataset_size=len(loader.dataset), config=config_dict or {})
        path = path or ckpt.checkpoint_path(run_dir, epochs_done, step if batch else None)
        ckpt.atomic_save(state, path)
        if prune and path.name != ckpt.best_path(run_dir).name:
            ckpt.prune(run_dir, cfg.keep_checkpoints)
        return path

    def scratch_save() -> None:  # the probe times one checkpoint save
        path = run_dir / "checkpoints" / ".budget-probe.pt"
        try:
            save(0, path, prune=False)
        finally:
            path.unlink(missing_ok=True)

    def probe_context() -> Context:
        e = method.hook_probe_epoch
        return Context(epoch=e, step=0, total_steps=PROBE_TOTAL_STEPS, steps_per_epoch=steps_per_epoch,
                       epochs=max(cfg.epochs, e + 1), device=device, eval_batches=eval_batches,
                       dataset_size=len(loader.dataset), optimizer=optimizer)

    def stop_requested() -> bool:
        flag = preempt.requested is not None
        if dist.is_distributed():  # every rank must stop at the same step
            flag = bool(dist.all_reduce_sum(torch.tensor(float(flag), device=device)) > 0)
        return flag

    def stop(epoch: int, path: Path | None) -> Preempted:
        why = preempt.requested or "a signal on another process"
        if run_dir is None:
            where = "no run folder, so nothing was saved"
        else:  # only rank 0 writes
            where = f"checkpoint {path or 'saved by rank 0'}; continue with: selfsup pretrain --resume {run_dir}"
        return Preempted(f"stopped by {why} at epoch {epoch + 1}, step {step}; {where}",
                         str(path) if path else None, step)

    def run_monitor(epoch: int) -> dict[str, float]:
        if monitor is None:
            return {}
        out = {f"knn_{k}": v for k, v in monitor(method.backbone).items() if isinstance(v, float)}
        if dist.is_main():
            log.write({"epoch": epoch, "step": step, **out})
            if show:
                print(f"epoch {epoch}: kNN top-1 {out.get('knn_top1', float('nan')):.2f}%", flush=True)
        return out

    monitor_s = 0.0
    if resume is None:
        t = time.perf_counter()
        run_monitor(0)
        monitor_s = time.perf_counter() - t if monitor is not None else 0.0
    method.train()
    # What a budget plans beside the steps (budget.plan_steps, budget.recheck).
    planned_work = dict(knn_every=cfg.knn_every if monitor is not None else 0, checkpoint_every=cfg.checkpoint_every,
                        checkpoint_every_steps=cfg.checkpoint_every_steps)
    if cfg.budget_minutes is not None and plan is None:
        costs = probe(method, model, loader, recipe, optimizer, aug_gen, cfg, probe_context,
                      save_to=scratch_save if run_dir is not None and dist.is_main() else None,
                      monitor_s=monitor_s, started_at=started_at, autocast=autocast, sync=sync)
        costs = mean_over_ranks(costs, device)
        recipe_phases = {name: (getattr(method, name), unit) for name, unit in method.startup_phases}

        def hook_runs(e: int, n: int) -> int:  # with the start-up phases that a run of n steps has
            for name, value in budget.startup_phases(recipe_phases, steps_per_epoch, n).items():
                setattr(method, name, value)
            return method.hook_runs(e, n, steps_per_epoch)

        planned, planned_epochs = budget.plan_steps(cfg.budget_minutes, costs, steps_per_epoch, hook_runs=hook_runs,
                                                    **planned_work)
        plan = {"budget_minutes": cfg.budget_minutes, "total_steps": planned, "epochs": planned_epochs,
                "steps_per_epoch": steps_per_epoch, "step_seconds": costs.step_s, "costs": costs.to_dict(),
                "warmup_steps": budget.warmup_steps(cfg.warmup_epochs, steps_per_epoch, planned),
                "startup": budget.startup_phases(recipe_phases, steps_per_epoch, planned)}
        log.write({"type": "plan", "step": step, **plan})
        if show:
            last = planned - (planned_epochs - 1) * steps_per_epoch
            part = f", the last one {last} of {steps_per_epoch} steps" if last < steps_per_epoch else ""
            print(f"budget {cfg.budget_minutes:g} min: {planned} steps = {planned_epochs} epochs{part} at "
                  f"{costs.step_s:.3g} s/step (epoch hook {costs.epoch_hook_s:.3g} s, kNN monitor "
                  f"{costs.monitor_s:.3g} s, checkpoint {costs.checkpoint_s:.3g} s, {costs.fixed_s:.3g} s spent "
                  "before training)", flush=True)
            capped = {k: f"{recipe_phases[k][0]} -> {v} {recipe_phases[k][1]}" for k, v in plan["startup"].items()
                      if v != recipe_phases[k][0]}
            if capped:
                print(f"budget: start-up phases capped at {budget.WARMUP_SHARE:.0%} of the run: "
                      + ", ".join(f"{k} {v}" for k, v in capped.items()), flush=True)
    if plan is not None:
        if plan.get("steps_per_epoch", steps_per_epoch) != steps_per_epoch:
            raise SelfSupError(f"the budget plan was made for {plan['steps_per_epoch']} steps per epoch, this run "
                               f"has {steps_per_epoch}; resume with the data and batch size it was planned for")
        epochs, run_steps = plan["epochs"], plan["total_steps"]
        total_steps = run_steps if cfg.max_steps is None else min(run_steps, cfg.max_steps)
        warmup = plan["warmup_steps"]
        for name, value in plan.get("startup", {}).items():  # also on resume: the plan's, not the recipe's
            setattr(method, name, value)
    else:
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
    def lr_values() -> list[float]:
        """One value per planned step: the last planned step takes the schedule's last (its floor). A
        re-planned run's schedule is its first plan's, relaid at each re-plan (live and on resume)."""
        rechecks = plan.get("rechecks", []) if plan is not None else []
        out = cosine_schedule(peak, rechecks[0]["planned_steps"] if rechecks else run_steps, warmup,
                              final=cfg.min_lr * peak)
        for change in rechecks:
            out = relaid(out, max(change["step"], warmup), change["total_steps"])
        return out

    lr_schedule = lr_values()
    # A fresh budgeted run checks its plan at each epoch end until its first checkpoint (budget.recheck).
    rechecking = plan is not None and resume is None and cfg.max_steps is None
    trained_s = 0.0  # the epochs' step time so far, for the re-checks
    with preempt:
        for epoch in itertools.count(start_epoch):  # a re-check may lengthen the run
            if step >= total_steps or epoch >= epochs:
                break
            loader.set_epoch(epoch)
            ctx = context(epoch)
            if batch == 0:
                method.on_epoch_start(ctx)
            optimizer.zero_grad(set_to_none=True)
            from tqdm import tqdm

            bar = tqdm(total=batches_per_epoch, initial=batch, desc=f"epoch {epoch + 1}/{epochs}",
                       disable=not show, dynamic_ncols=True, leave=False)
            micro = 0
            t_epoch, images_seen = time.perf_counter(), 0
            t0 = time.perf_counter()
            for images, _labels, index in itertools.islice(loader.iter_from(batch), batches_per_epoch - batch):
                if step >= total_steps:
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
                scalars = step_scalars(out)  # first: it names a missing "loss" clearly
                loss = out["loss"]
                batch += 1
                stepped, bad = False, None
                if not math.isfinite(scalars["loss"]):  # any rank's non-finite loss skips the step on all
                    bad, micro = "loss", 0
                else:
                    with sync_ctx:
                        (loss / cfg.accumulate).backward()
                    micro += 1
                    if micro == cfg.accumulate:
                        micro = 0
                        if not grads_finite(method.parameters()):
                            bad = "gradients"
                        else:
                            if cfg.grad_clip:
                                torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
                            optimizer.step()
                            step += 1
                            ctx.step = step
                            method.on_step_end(ctx)
                            guard.ok()
                            stepped = True
                        optimizer.zero_grad(set_to_none=True)
                if bad is not None:
                    optimizer.zero_grad(set_to_none=True)
                    guard.skip(bad, epoch, step, log=log.write)
                else:
                    sync()
                    t3 = time.perf_counter()
                    timing["data"] += t1 - t0
                    timing["augment"] += t2 - t1
                    timing["compute"] += t3 - t2
                    images_seen += images.shape[0] * loader.world_size
                    values = {**scalars, **ctx.log}
                    ctx.log.clear()
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                    count += 1
                    ips = images_seen / max(1e-9, time.perf_counter() - t_epoch)
                    health = collapse(out, step) if stepped else {}
                    if stepped and (step % cfg.log_every == 0 or health):
                        log.write({"epoch": epoch, "step": step, "lr": lr, **values, **health,
                                   "images_per_s": round(ips, 1)})
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.3g}", img_s=f"{ips:.0f}", refresh=False)
                bar.update(1)
                t0 = time.perf_counter()
                if micro or batch >= batches_per_epoch or step >= total_steps:
                    continue  # not a step boundary, or the epoch's end (handled below)
                if stop_requested():
                    raise stop(epoch, save(epoch))
                if stepped and cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                    save(epoch)
                    rechecking = False
            bar.close()
            record = {"epoch": epoch + 1, "step": step, **{k: v / counts[k] for k, v in sums.items()},
                      "skipped_steps": guard.total, "epoch_time_s": round(time.perf_counter() - t_epoch, 3)}
            if loader.failed:
                record["unreadable_images"] = len(loader.failed)
            if count and not math.isfinite(record.get("loss", 0.0)):
                raise SelfSupError(f"epoch {epoch + 1}: mean loss is not finite")
            trained_s += record["epoch_time_s"]
            if rechecking and not (epoch + 1 == epochs or step >= total_steps):
                step_s, elapsed_s = rechecked(trained_s, step, elapsed(), device)
                costs = budget.Costs(**plan["costs"])
                planned, planned_epochs = budget.recheck(
                    plan["budget_minutes"], costs, step_s, step, epoch + 1, elapsed_s, plan["total_steps"],
                    steps_per_epoch, hook_runs=lambda e, n: method.hook_runs(e, n, steps_per_epoch), **planned_work)
                if planned != plan["total_steps"]:
                    change = {"step": step, "step_seconds": round(step_s, 6), "planned_steps": plan["total_steps"],
                              "total_steps": planned, "epochs": planned_epochs}
                    log.write({"type": "recheck", **change})
                    if show:
                        print(f"budget: steps took {step_s:.3g} s so far against {costs.step_s:.3g} s probed; "
                              f"re-planned {plan['total_steps']} -> {planned} steps = {planned_epochs} epochs",
                              flush=True)
                    plan["rechecks"] = plan.get("rechecks", []) + [change]
                    plan.update(total_steps=planned, epochs=planned_epochs)
                    epochs, run_steps = planned_epochs, planned
                    total_steps = run_steps
                    lr_schedule = lr_values()
            finished = epoch + 1 == epochs or step >= total_steps
            improved = False
            if monitor is not None and (finished or (cfg.knn_every and (epoch + 1) % cfg.knn_every == 0)):
                record.update(run_monitor(epoch + 1))
                top1 = record.get("knn_top1")
                improved = top1 is not None and (best is None or top1 > best)
                best = top1 if improved else best
            if finished and plan is not None:
                record.update(budget_minutes=plan["budget_minutes"], planned_steps=plan["total_steps"],
                              epochs=plan["epochs"], minutes=round(elapsed() / 60, 3))
            history.append(record)
            log.write({"type": "epoch", **record})
            if show:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                                  if k not in ("epoch", "step") and not (k == "skipped_steps" and v == 0))
                print(f"epoch {epoch + 1}/{epochs}: {shown}", flush=True)
            batch, sums, counts, count = 0, {}, {}, 0
            halt = stop_requested() and not finished
            every = cfg.checkpoint_every_steps
            path = None
            if finished or halt or (epoch + 1) % cfg.checkpoint_every == 0 or (every and step % every == 0):
                path = save(epoch + 1)  # epoch ends are saved whole: batch 0 of the next epoch
                rechecking = False  # a resume from here must follow the plan this run follows
            if improved:
                save(epoch + 1, ckpt.best_path(run_dir) if run_dir else None)
            if halt:
                raise stop(epoch, path)
            if finished:
                break
            method.train()
    return FitResult(steps=step, epochs=epoch + 1, history=history, timing=timing, skipped_steps=guard.total,
                     minutes=elapsed() / 60, budget_minutes=plan["budget_minutes"] if plan else None,
                     planned_steps=plan["total_steps"] if plan else None)
