"""``train.budget_minutes``: how many optimizer steps fit a wall-clock budget.

A budgeted run measures what its parts cost before its first real step (the trainer's probe) and
fixes its length once: ``plan_steps`` turns those :class:`Costs` into a number of optimizer steps
and the epochs they span. The plan counts everything the run will spend time on:

- the time already spent before training (loading data, the epoch-0 kNN monitor, the probe);
- every optimizer step (data, augmentation, forward, backward, update, ``on_step_end``);
- the methods' costly hook work (an E-step, a relabelling, a bank refresh), as often as the
  method says it happens over the run (``hook_runs``; by default once per epoch);
- the online kNN monitor every ``knn_every`` epochs and at the end, a ``best.pt`` save after each
  monitor (counted as if the kNN improved every time) and the checkpoints: every
  ``checkpoint_every`` epochs, every ``checkpoint_every_steps`` steps and the final one.

A budgeted run's start-up phases are capped at ``WARMUP_SHARE`` of the planned steps: the lr
warm-up (``train.warmup_epochs``; a recipe's 10 warm-up epochs would otherwise fill a short run,
whose lr would then never decay) and the methods' own (``Method.startup_phases``: PCL's epochs of
InfoNCE alone before its first E-step, SwAV's queue start and prototype freezing), so that a
30-minute run of a 200-epoch recipe still spends most of its steps in the method's main phase. A
phase counted in epochs keeps at least one epoch; one that fits the cap keeps the recipe's length.
Only ``SAFETY`` of the budget is planned, for the spread of step times over a run. The plan is a
whole number of steps; the last epoch may be partial (``epochs`` counts it), and every schedule
(lr warm-up and cosine, EMA momentum, relabelling points) is laid on the planned steps, so each
ends with the run.

A step's time drifts over a run: on these shared 2-core machines the steps sustained over
epochs ran 5-10% slower than the probe's (a Xeon) or, after a slower first epoch, 10% faster (an
EPYC). So at the end of each epoch until its first checkpoint (``train.checkpoint_every``, 10 by
default) the run checks its plan against the mean step time so far (:func:`recheck`) and re-plans
when the steps that fit differ from the plan by more than ``RECHECK_TOLERANCE``, shorter or longer.
The warm-up and start-up phases stay as first planned; the rest of the lr schedule is stretched or
squeezed onto the new length from where it is (``optim.relaid``), so it goes on without a jump and
still ends on its floor (an EMA momentum laid on ``ctx.total_steps`` moves a little at a re-plan).
Checks stop at the first checkpoint, so that a run resumed from any epoch checkpoint follows the
plan the uninterrupted run followed from there, exactly; the re-plans are kept in the plan
(``rechecks``) and a resumed run rebuilds its lr schedule from them. A run resumed from a
checkpoint written before the checks stopped (a preemption, ``checkpoint_every_steps``) keeps the
plan it holds and checks no more. This module is pure arithmetic: no clock, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from selfsup.errors import SelfSupError

__all__ = ["RECHECK_TOLERANCE", "SAFETY", "WARMUP_SHARE", "Costs", "capped_epochs", "capped_steps", "plan_steps",
           "recheck", "run_seconds", "startup_phases", "warmup_steps"]

SAFETY = 0.97  # the share of the budget that is planned
WARMUP_SHARE = 0.1  # a budgeted run's lr warm-up takes at most this share of its planned steps


@dataclass(frozen=True)
class Costs:
    """What a budgeted run measured, in seconds."""

    step_s: float  # one optimizer step
    epoch_hook_s: float = 0.0  # one costly hook call (on_epoch_start's E-step, relabelling, bank refresh)
    monitor_s: float = 0.0  # one online kNN monitor run (0 without a monitor)
    checkpoint_s: float = 0.0  # one checkpoint save (0 without a run folder)
    fixed_s: float = 0.0  # already spent before the first real step

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in asdict(self).items()}


def _saves_and_monitors(epochs: int, total_steps: int, knn_every: int, checkpoint_every: int,
                        checkpoint_every_steps: int | None) -> tuple[int, int]:
    """(checkpoint saves, monitor runs) of a run of ``total_steps`` steps in ``epochs`` epochs."""
    inner = epochs - 1  # epoch ends before the last one
    monitors = 1 + (inner // knn_every if knn_every else 0)
    saves = 1 + inner // checkpoint_every + (total_steps // checkpoint_every_steps if checkpoint_every_steps else 0)
    saves += monitors  # best.pt after a monitor whose kNN improved: counted as always
    return saves, monitors


def run_seconds(total_steps: int, costs: Costs, steps_per_epoch: int, knn_every: int = 0,
                checkpoint_every: int = 10, checkpoint_every_steps: int | None = None,
                hook_runs: Callable[[int, int], float] | None = None) -> float:
    """The whole run's expected wall-clock seconds with ``total_steps`` optimizer steps."""
    epochs = max(1, math.ceil(total_steps / steps_per_epoch))
    hooks = hook_runs(epochs, total_steps) if hook_runs is not None else epochs
    saves, monitors = _saves_and_monitors(epochs, total_steps, knn_every, checkpoint_every, checkpoint_every_steps)
    return (costs.fixed_s + total_steps * costs.step_s + hooks * costs.epoch_hook_s + monitors * costs.monitor_s
            + saves * costs.checkpoint_s)


def plan_steps(budget_minutes: float, costs: Costs, steps_per_epoch: int, knn_every: int = 0,
               checkpoint_every: int = 10, checkpoint_every_steps: int | None = None,
               hook_runs: Callable[[int, int], float] | None = None) -> tuple[int, int]:
    """``(total_steps, epochs)``: the most optimizer steps whose run fits ``SAFETY`` of the budget,
    and the epochs they span (the last one possibly partial).

    ``hook_runs(epochs, total_steps)`` is how many costly hook calls such a run makes (default:
    ``epochs``). Raises :class:`SelfSupError` when not even one epoch fits.
    """
    if budget_minutes <= 0:
        raise SelfSupError(f"train.budget_minutes must be positive, got {budget_minutes}")
    if steps_per_epoch < 1:
        raise SelfSupError(f"an epoch has {steps_per_epoch} optimizer steps; nothing to plan")
    if not costs.step_s > 0:
        raise SelfSupError(f"a measured step time must be positive, got {costs.step_s} s")
    usable = budget_minutes * 60 * SAFETY

    def seconds(n: int) -> float:
        return run_seconds(n, costs, steps_per_epoch, knn_every, checkpoint_every, checkpoint_every_steps, hook_runs)

    # The largest n with seconds(n) <= usable: run time grows with n (by at least step_s a step).
    lo, hi = 0, 1
    while seconds(hi) <= usable and hi < 10**12:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if seconds(mid) <= usable else (lo, mid)
    steps = lo
    if steps < steps_per_epoch:
        need = seconds(steps_per_epoch) / SAFETY / 60
        raise SelfSupError(
            f"train.budget_minutes={budget_minutes:g} fits about {steps} optimizer step{'s' * (steps != 1)} (measured "
            f"{costs.step_s:.3g} s/step, {costs.epoch_hook_s:.3g} s per epoch hook, {costs.monitor_s:.3g} s per kNN "
            f"monitor, {costs.checkpoint_s:.3g} s per checkpoint, {costs.fixed_s:.3g} s already spent), less than "
            f"one epoch of {steps_per_epoch} steps; set train.budget_minutes >= {math.ceil(need * 100) / 100:g} "
            "or use train.epochs")
    return steps, math.ceil(steps / steps_per_epoch)


def capped_steps(steps: int, total_steps: int) -> int:
    """A start-up phase of ``steps`` optimizer steps in a budgeted run: at most ``WARMUP_SHARE`` of it."""
    return min(steps, int(total_steps * WARMUP_SHARE))


def capped_epochs(epochs: int, steps_per_epoch: int, total_steps: int) -> int:
    """A start-up phase of ``epochs`` epochs in a budgeted run: at most ``WARMUP_SHARE`` of its steps,
    rounded to whole epochs, and at least one epoch unless the recipe's phase is 0."""
    return min(epochs, max(1, round(total_steps * WARMUP_SHARE / steps_per_epoch)))


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """A budgeted run's lr warm-up in steps: ``warmup_epochs``, at most ``WARMUP_SHARE`` of the run."""
    return capped_steps(round(warmup_epochs * steps_per_epoch), total_steps)


def startup_phases(phases: dict[str, tuple[int, str]], steps_per_epoch: int, total_steps: int) -> dict[str, int]:
    """A budgeted run's values of a method's start-up phases: ``{name: (value, "epochs" | "steps")}``
    in, ``{name: capped value}`` out."""
    out = {}
    for name, (value, unit) in phases.items():
        if unit not in ("epochs", "steps"):
            raise ValueError(f"start-up phase {name!r} is counted in {unit!r}, not 'epochs' or 'steps'")
        out[name] = capped_epochs(value, steps_per_epoch, total_steps) if unit == "epochs" \
            else capped_steps(value, total_steps)
    return out


RECHECK_TOLERANCE = 0.02  # a re-check changes the plan only when it moves it by more than this share


def recheck(budget_minutes: float, costs: Costs, step_s: float, steps_done: int, epochs_done: int,
            elapsed_s: float, planned_steps: int, steps_per_epoch: int, knn_every: int = 0,
            checkpoint_every: int = 10, checkpoint_every_steps: int | None = None,
            hook_runs: Callable[[int, int], float] | None = None) -> tuple[int, int]:
    """``(total_steps, epochs)`` of a plan checked at the end of epoch ``epochs_done`` (counted from
    1), ``steps_done`` steps and ``elapsed_s`` seconds into the run, whose steps have taken
    ``step_s`` each on average: the most steps that fit the budget now, never fewer than
    ``steps_done``; the plan's ``planned_steps`` when that moves it by ``RECHECK_TOLERANCE`` or less.

    What was spent so far that the steps, the hooks run and the monitors run do not account for
    (loading, the probe, the epoch-0 monitor) is counted as already spent (``fixed_s``); the hooks,
    monitors and saves still to come are counted as :func:`plan_steps` counts them.
    """
    hooks_done = hook_runs(epochs_done, steps_done) if hook_runs is not None else epochs_done
    monitors_done = (epochs_done - 1) // knn_every if knn_every else 0  # this epoch's has not run yet
    spent = elapsed_s - steps_done * step_s - hooks_done * costs.epoch_hook_s - monitors_done * costs.monitor_s
    now = replace(costs, step_s=step_s, fixed_s=max(costs.fixed_s, spent))
    try:
        fits, _ = plan_steps(budget_minutes, now, steps_per_epoch, knn_every, checkpoint_every,
                             checkpoint_every_steps, hook_runs)
    except SelfSupError:  # not even one epoch fits any more: stop where the run is
        fits = steps_done
    steps = max(fits, steps_done)
    if abs(steps - planned_steps) <= RECHECK_TOLERANCE * planned_steps:
        steps = planned_steps
    return steps, math.ceil(steps / steps_per_epoch)
