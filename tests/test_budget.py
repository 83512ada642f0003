"""train.budget_minutes: the plan's arithmetic, a budgeted run's length and schedules, exact resume
with the stored plan, and a probe that leaves no trace.

Real timings would make these tests flaky, so the runs keep the trainer's real probe (it trains
and rewinds) but hand the planner fixed costs: a step costs 1 s and nothing else costs anything,
so a budget of (n + 0.5) / (60 x SAFETY) minutes plans exactly n steps.
"""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from resume_util import BASE, _records

from selfsup.config import load_config
from selfsup.errors import Preempted, SelfSupError
from selfsup.methods import METHODS
from selfsup.train import budget, trainer
from selfsup.train import checkpoint as ckpt
from selfsup.train.budget import SAFETY, Costs, plan_steps, run_seconds
from selfsup.train.optim import cosine_schedule, relaid, scaled_lr
from selfsup.train.pretrain import build_method, pretrain

# 192 digits in batches of 64: 3 optimizer steps per epoch.
BYOL = ["method.name=byol", "method.hidden_dim=64", "method.projection_dim=32"]  # an EMA over ctx.total_steps
STEP_ONLY = Costs(step_s=1.0)


def budget_for(steps: int) -> float:
    """The budget that plans exactly ``steps`` steps at 1 s a step and no other cost."""
    return (steps + 0.5) / (60 * SAFETY)


def fixed_probe(monkeypatch, costs: Costs) -> list[Costs]:
    """Let the trainer's probe run (it trains and rewinds) but report ``costs``; returns the list
    of what the real probe measured, one entry per call."""
    real, calls = trainer.probe, []

    def probe(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return costs

    monkeypatch.setattr(trainer, "probe", probe)
    # The re-checks see the same step time and the time those steps took, so they keep the plan (a
    # test's steps take milliseconds, its start-up seconds: real clocks would re-plan).
    monkeypatch.setattr(trainer, "rechecked", lambda trained_s, steps, elapsed_s, device: (costs.step_s,
                                                                                         steps * costs.step_s))
    return calls


def preempted_run(monkeypatch, name: str, stop_step: int, args: list[str]) -> None:
    """Run ``args`` as run ``part`` with method ``name`` sent SIGTERM after optimizer step
    ``stop_step`` (not in the probe), so that it stops with a checkpoint to resume."""

    class Stopping(METHODS[name]):
        def on_step_end(self, ctx):
            super().on_step_end(ctx)
            if ctx.step == stop_step and ctx.total_steps < trainer.PROBE_TOTAL_STEPS:
                os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as mp:
        mp.setitem(METHODS, name, Stopping)
        with pytest.raises(Preempted):
            pretrain(load_config(None, args + ["run.name=part"]), progress=False)


def test_plan_counts_steps_hooks_monitors_and_checkpoints():
    # 1 s a step, 2 s an epoch hook, 3 s the final kNN monitor, 1 s a save (the final one and
    # best.pt after the final monitor), 10 epochs between saves: n + 2 E + 3 + 2 <= 58.2 s.
    costs = Costs(step_s=1.0, epoch_hook_s=2.0, monitor_s=3.0, checkpoint_s=1.0)
    assert plan_steps(1.0, costs, 10, knn_every=0, checkpoint_every=10) == (43, 5)  # 43 + 10 + 5 = 58
    assert run_seconds(44, costs, 10, 0, 10) > 60 * SAFETY
    # Every 2nd epoch a monitor and its best.pt save, every 2nd a save, every 4 steps a save.
    many = run_seconds(40, costs, 10, knn_every=2, checkpoint_every=2, checkpoint_every_steps=4)
    assert many == 40 + 4 * 2 + (1 + 1) * 3 + (1 + 1 + 10 + 2) * 1
    # What a method says about its hooks replaces once per epoch; time already spent counts.
    once = plan_steps(1.0, Costs(step_s=1.0, epoch_hook_s=5.0, fixed_s=8.0), 10, hook_runs=lambda e, n: 1)
    assert once == (45, 5)  # 8 + 45 + 5 = 58
    steps, epochs = plan_steps(30, Costs(step_s=0.05, epoch_hook_s=1.5, monitor_s=4, checkpoint_s=0.3, fixed_s=20),
                               22, knn_every=10, checkpoint_every=10)
    assert epochs == math.ceil(steps / 22)
    assert run_seconds(steps, costs := Costs(0.05, 1.5, 4, 0.3, 20), 22, 10, 10) <= 30 * 60 * SAFETY
    assert run_seconds(steps + 1, costs, 22, 10, 10) > 30 * 60 * SAFETY


def test_a_budget_shorter_than_one_epoch_is_a_clear_error(tmp_path):
    with pytest.raises(SelfSupError) as e:
        plan_steps(0.1, Costs(step_s=1.0, fixed_s=1.0), 22)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("train.budget_minutes=0.1 fits about 4 optimizer steps (measured 1 s/step")
    assert "less than one epoch of 22 steps; set train.budget_minutes >= 0.4 or use train.epochs" in msg
    with pytest.raises(SelfSupError, match="train.budget_minutes must be positive"):
        load_config(None, ["train.budget_minutes=0"])
    # A real run: loading the data alone takes longer than a budget of 60 ms.
    cfg = load_config(None, BASE + ["method.name=simclr", "train.budget_minutes=0.001", f"run.dir={tmp_path}"])
    with pytest.raises(SelfSupError, match=r"fits about 0 optimizer steps .* less than one epoch of 3 steps"):
        pretrain(cfg, progress=False)


def test_a_budgeted_run_plans_its_steps_saves_the_plan_and_lays_the_schedules_on_it(tmp_path, monkeypatch):
    measured = fixed_probe(monkeypatch, STEP_ONLY)
    # A recipe's 10 warm-up epochs would fill this run: they are capped at a tenth of it.
    args = BASE + BYOL + [f"train.budget_minutes={budget_for(20)}", "train.warmup_epochs=10", f"run.dir={tmp_path}"]
    run = pretrain(load_config(None, args), progress=False)
    assert len(measured) == 1 and measured[0].step_s > 0 and measured[0].checkpoint_s > 0
    assert run.fit.steps == run.fit.planned_steps == 20 and run.fit.epochs == 7  # 6 x 3 steps + 2
    assert run.fit.budget_minutes == pytest.approx(budget_for(20)) and run.fit.minutes > 0
    state, _ = ckpt.load_latest(run.run_dir)
    plan = state["loop"]["plan"]
    assert (plan["total_steps"], plan["epochs"], plan["warmup_steps"]) == (20, 7, 2) and state["step"] == 20
    records = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if r.get("type") == "plan"] == [{"type": "plan", "step": 0, **plan}]
    last = [r for r in records if r.get("type") == "epoch"][-1]
    assert (last["budget_minutes"], last["planned_steps"], last["epochs"], last["step"]) == (plan["budget_minutes"],
                                                                                           20, 7, 20)
    assert "minutes" in last
    lrs = [r["lr"] for r in records if "lr" in r]
    peak = scaled_lr(load_config(None, args).train.lr, 64, "linear")
    assert lrs == pytest.approx(cosine_schedule(peak, 20, 2)) and lrs[-1] == min(lrs)  # ends on the last step


def test_a_budgeted_run_resumes_exactly_with_its_stored_plan(tmp_path, monkeypatch):
    fixed_probe(monkeypatch, STEP_ONLY)
    args = BASE + BYOL + [f"train.budget_minutes={budget_for(5)}", f"run.dir={tmp_path}"]  # 2 epochs, last partial
    full = pretrain(load_config(None, args + ["run.name=full"]), progress=False)
    assert full.fit.steps == 5

    preempted_run(monkeypatch, "byol", 4, args)  # inside the partial last epoch
    # Measured again, the costs would plan another length (here 11 steps): the stored plan is used.
    again = fixed_probe(monkeypatch, Costs(step_s=0.5))
    assert budget.plan_steps(budget_for(5), Costs(step_s=0.5), 3)[0] == 11
    resumed = pretrain(None, resume_dir=tmp_path / "part", progress=False)
    assert again == [] and resumed.fit.steps == resumed.fit.planned_steps == 5
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []

    def untimed(run_dir):
        return [{k: v for k, v in r.items() if k != "minutes"} for r in _records(run_dir)]

    assert untimed(full.run_dir) == untimed(resumed.run_dir)


def test_a_recheck_re_plans_with_the_step_time_so_far_and_never_below_the_steps_taken():
    # Planned: 20 steps at 1 s, 3 a epoch. At the end of the first epoch (3 steps) the steps took
    # 0.5 s or 2 s: 41 or 10 steps fit 20.5 s.
    args = dict(planned_steps=20, steps_per_epoch=3)
    assert budget.recheck(budget_for(20), STEP_ONLY, 0.5, 3, 1, 1.5, **args) == (41, 14)
    assert budget.recheck(budget_for(20), STEP_ONLY, 2.0, 3, 1, 6.0, **args) == (10, 4)
    # Within RECHECK_TOLERANCE (2%) the plan stays: 99 steps fit at 1.01 s, 95 at 1.05 s.
    assert budget.RECHECK_TOLERANCE == 0.02
    hundred = dict(planned_steps=100, steps_per_epoch=3)
    assert budget.recheck(budget_for(100), STEP_ONLY, 1.01, 3, 1, 3.03, **hundred) == (100, 34)
    assert budget.recheck(budget_for(100), STEP_ONLY, 1.05, 3, 1, 3.15, **hundred) == (95, 32)
    # Time spent apart from the steps counts: 4 s of loading and probing leave 16.5 s, 8 steps.
    assert budget.recheck(budget_for(20), Costs(step_s=1.0, fixed_s=4.0), 2.0, 3, 1, 10.0, **args) == (8, 3)
    # So do the hooks still to come, 2 s each, one an epoch (the first one is done): 2 x 7 + 2 x 3 <= 20.5.
    assert budget.recheck(budget_for(20), Costs(step_s=1.0, epoch_hook_s=2.0), 2.0, 3, 1, 8.0, **args) == (7, 3)
    # And the monitors, 3 s after each epoch: after 2 epochs (12 s of steps, one monitor) only this
    # epoch's end fits, 2 x 6 + 3 x 2 <= 20.5.
    assert budget.recheck(budget_for(20), Costs(step_s=1.0, monitor_s=3.0), 2.0, 6, 2, 15.0, knn_every=1,
                          **args) == (6, 2)
    # Nothing fits any more: the run ends where it is.
    assert budget.recheck(budget_for(20), STEP_ONLY, 2.0, 3, 1, 30.0, **args) == (3, 1)


def test_relaid_schedules_go_on_from_where_they_are_and_end_on_their_last_value():
    s = cosine_schedule(1.0, 20, 2)
    assert relaid(s, 3, 20) == s
    assert relaid(s, 3, 6) == pytest.approx(s[:3] + [s[3], s[11], s[19]])
    longer = relaid(s, 3, 40)
    assert len(longer) == 40 and longer[:4] == s[:4] and longer[-1] == s[-1]
    assert all(a >= b for a, b in zip(longer[2:], longer[3:]))  # still decays, without a jump
    assert relaid(s, 19, 25) == s[:19] + [s[19]] * 6 and relaid(s, 5, 4) == s[:4]


def test_a_run_slower_than_probed_is_re_planned_after_its_first_epoch_and_resumes_exactly(tmp_path, monkeypatch):
    fixed_probe(monkeypatch, STEP_ONLY)
    # The first epoch's steps take 3 s instead of the probed 1 s: 6 steps fit (3 x 6 <= 20.5 s).
    monkeypatch.setattr(trainer, "rechecked", lambda trained_s, steps, elapsed_s, device: (3.0, 3.0 * steps))
    args = BASE + BYOL + [f"train.budget_minutes={budget_for(20)}", "train.warmup_epochs=10", f"run.dir={tmp_path}"]
    full = pretrain(load_config(None, args + ["run.name=full"]), progress=False)
    assert (full.fit.steps, full.fit.planned_steps, full.fit.epochs) == (6, 6, 2)
    plan = ckpt.load_latest(full.run_dir)[0]["loop"]["plan"]
    assert (plan["total_steps"], plan["epochs"], plan["warmup_steps"]) == (6, 2, 2)  # the warm-up is kept
    assert plan["rechecks"] == [{"step": 3, "step_seconds": 3.0, "planned_steps": 20, "total_steps": 6, "epochs": 2}]
    records = _records(full.run_dir)
    assert [r for r in records if r.get("type") == "recheck"] == [
        {"type": "recheck", "step": 3, "step_seconds": 3.0, "planned_steps": 20, "total_steps": 6, "epochs": 2}]
    last = [r for r in records if r.get("type") == "epoch"][-1]
    assert (last["planned_steps"], last["epochs"], last["step"]) == (6, 2, 6)
    # The lr: the first plan's for the first epoch's steps, then its rest squeezed onto 3 steps.
    peak = scaled_lr(load_config(None, args).train.lr, 64, "linear")
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs == pytest.approx(relaid(cosine_schedule(peak, 20, 2), 3, 6))

    preempted_run(monkeypatch, "byol", 4, args)  # after the re-plan
    resumed = pretrain(None, resume_dir=tmp_path / "part", progress=False)
    assert (resumed.fit.steps, resumed.fit.planned_steps) == (6, 6)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_run_faster_than_probed_is_lengthened_and_its_schedule_still_ends_on_its_floor(tmp_path, monkeypatch):
    fixed_probe(monkeypatch, STEP_ONLY)
    # Steps take 0.5 s instead of 1 s: 41 steps fit 20.5 s (0.5 x 41), re-planned once, after epoch 1.
    monkeypatch.setattr(trainer, "rechecked", lambda trained_s, steps, elapsed_s, device: (0.5, 0.5 * steps))
    args = BASE + BYOL + [f"train.budget_minutes={budget_for(20)}", "train.warmup_epochs=10", f"run.dir={tmp_path}"]
    run = pretrain(load_config(None, args), progress=False)
    assert (run.fit.steps, run.fit.planned_steps, run.fit.epochs) == (41, 41, 14)
    plan = ckpt.load_latest(run.run_dir)[0]["loop"]["plan"]
    assert [(c["step"], c["total_steps"]) for c in plan["rechecks"]] == [(3, 41)]
    peak = scaled_lr(load_config(None, args).train.lr, 64, "linear")
    lrs = [r["lr"] for r in _records(run.run_dir) if "lr" in r]
    assert lrs == pytest.approx(relaid(cosine_schedule(peak, 20, 2), 3, 41))
    assert lrs[-1] == pytest.approx(cosine_schedule(peak, 20, 2)[-1]) == min(lrs)


# MoCo v1: a queue and shuffle-BN drawn from torch's global RNG; DeepCluster: an epoch hook that
# clusters, re-draws the classifier and drops its optimizer state.
@pytest.mark.parametrize("method", ["moco_v1", "deepcluster"])
def test_the_probe_leaves_no_trace(method, tmp_path, monkeypatch):
    overrides = {"moco_v1": ["method.name=moco_v1", "method.queue_size=128"],
                 "deepcluster": ["method.name=deepcluster", "method.num_clusters=5", "method.pca_dim=8"]}
    args = BASE + overrides[method] + [f"run.dir={tmp_path}", "train.epochs=2"]
    plain = pretrain(load_config(None, args + ["run.name=plain"]), progress=False)
    measured = fixed_probe(monkeypatch, STEP_ONLY)
    budgeted = pretrain(load_config(None, args + ["run.name=budget", f"train.budget_minutes={budget_for(6)}"]),
                        progress=False)
    assert len(measured) == 1 and plain.fit.steps == budgeted.fit.planned_steps == budgeted.fit.steps == 6
    a, b = plain.method.state_dict(), budgeted.method.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    extra = ("budget_minutes", "planned_steps", "epochs", "minutes")
    ra = _records(plain.run_dir)
    rb = [{k: v for k, v in r.items() if k not in extra} for r in _records(budgeted.run_dir) if r.get("type") != "plan"]
    assert ra == rb


def _budgeted_rank(rank: int, world: int, run_dir: str) -> tuple[int, dict]:
    # Each rank measures its own costs (rank 0 also saves); the planner must see the ranks' mean.
    real = trainer.probe

    def probe(*args, **kwargs):
        real(*args, **kwargs)
        return Costs(step_s=1.0, checkpoint_s=2.0) if rank == 0 else Costs(step_s=0.5)

    trainer.probe = probe
    trainer.rechecked = lambda trained_s, steps, elapsed_s, device: (0.75, 0.75 * steps)  # as planned
    args = BASE + ["method.name=simclr", "method.hidden_dim=64", "method.projection_dim=32", "train.batch_size=32",
                   "train.budget_minutes=0.2", f"run.dir={run_dir}", "run.name=r"]
    result = pretrain(load_config(None, args), progress=False)
    return result.fit.steps, ckpt.load_latest(result.run_dir)[0]["loop"]["plan"] if rank == 0 else {}


def test_distributed_ranks_plan_the_same_steps_from_their_mean_costs(tmp_path):
    from distributed import run_distributed

    expected = plan_steps(0.2, Costs(step_s=0.75, checkpoint_s=2.0), 3, checkpoint_every=1)
    # Rank 0's costs alone, rank 1's alone, or the checkpoint averaged too would plan otherwise.
    others = [plan_steps(0.2, c, 3, checkpoint_every=1) for c in
              (Costs(step_s=1.0, checkpoint_s=2.0), Costs(step_s=0.5), Costs(step_s=0.75, checkpoint_s=1.0))]
    assert expected == (6, 2) and expected not in others
    (steps0, plan), (steps1, _) = run_distributed(_budgeted_rank, 2, str(tmp_path))
    assert steps0 == steps1 == plan["total_steps"] == 6 and plan["costs"]["step_s"] == 0.75


PCL = ["method.name=pcl", "method.num_clusters=[4,8]", "method.projection_dim=16", "method.hidden_dim=32",
       "method.queue_size=64", "method.momentum=0.9"]


def test_start_up_phases_are_capped_at_a_share_of_the_planned_steps_and_kept_on_resume(tmp_path, monkeypatch):
    assert budget.startup_phases({"a": (20, "epochs"), "b": (195, "steps"), "c": (0, "epochs"), "d": (2, "steps")},
                                 steps_per_epoch=3, total_steps=60) == {"a": 2, "b": 6, "c": 0, "d": 2}
    assert budget.capped_epochs(20, steps_per_epoch=100, total_steps=50) == 1  # at least one epoch
    # PCL clusters after its warm-up epochs: a hook costs 2 s. With warmup_epochs=5 capped to 1
    # epoch, 30 steps (10 epochs, 9 E-steps) take 30 + 18 = 48 s; planned with the recipe's 5
    # warm-up epochs the same budget would fit 34 steps (34 + 2 x 7 = 48 s).
    costs = Costs(step_s=1.0, epoch_hook_s=2.0)
    assert budget.plan_steps(48.5 / 60 / SAFETY, costs, 3, hook_runs=lambda e, n: e - 5)[0] == 34
    fixed_probe(monkeypatch, costs)
    args = BASE + PCL + ["method.warmup_epochs=5", f"train.budget_minutes={48.5 / 60 / SAFETY}",
                         "train.checkpoint_every=4", f"run.dir={tmp_path}"]
    full = pretrain(load_config(None, args + ["run.name=full"]), progress=False)
    plan = ckpt.load_latest(full.run_dir)[0]["loop"]["plan"]
    assert (plan["total_steps"], plan["epochs"], plan["startup"]) == (30, 10, {"warmup_epochs": 1})
    assert full.method.warmup_epochs == 1
    estep_epochs = [r["epoch"] for r in _records(full.run_dir) if "nmi_prev" in r or "proto_nce" in r]
    assert estep_epochs and min(estep_epochs) == 1  # ProtoNCE from the second epoch, not the sixth

    preempted_run(monkeypatch, "pcl", 16, args)  # in epoch 6, after the checkpoint at epoch 4
    resumed = pretrain(None, resume_dir=tmp_path / "part", progress=False)
    assert resumed.method.warmup_epochs == 1 and resumed.fit.steps == 30
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("recipe", ["deepcluster", "sela", "pcl", "swav", "instdisc", "transitive"])
def test_no_recipe_plans_more_than_one_costly_hook_pass_per_epoch_of_a_budgeted_run(recipe):
    # A budget lays every schedule on the steps that fit; a recipe whose hook count is fixed for its
    # own length (SeLa's 200 label updates for 200 epochs once was) would, in an 8-epoch budget,
    # pass over the whole data set every few steps and not fit the budget at all.
    cfg = load_config(recipe, ["model.width=0.25"])
    method = build_method(cfg, 2_000)
    for epochs in (1, 8, 40):
        steps = epochs * 195 - 50  # the last epoch partial, as a budget plans it
        assert method.hook_runs(epochs, steps, 195) <= epochs, (recipe, epochs)
