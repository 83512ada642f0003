import json
import math

import pytest
import torch

from selfsup.config import load_config
from selfsup.errors import SelfSupError
from selfsup.train import checkpoint as ckpt
from selfsup.train.optim import LARS, cosine_schedule, scaled_lr
from selfsup.train.pretrain import pretrain

TINY = ["data.subset=192", "data.image_size=16", "views.size=16", "model.width=0.125", "train.batch_size=64",
        "method.hidden_dim=64", "method.projection_dim=32", "train.warmup_epochs=0", "train.log_every=1"]


def test_lars_step_matches_hand_computation():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.5, momentum=0.9, eta=0.001)
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    opt.step()
    g = torch.tensor([[0.3, 1.4]])  # grad + wd * w
    trust = 0.001 * 5.0 / g.norm()
    assert torch.allclose(w.data, torch.tensor([[3.0, 4.0]]) - 0.5 * trust * g)
    assert torch.allclose(b.data, torch.tensor([0.0]))  # excluded: plain SGD, no wd, no trust ratio


def test_cosine_schedule_with_warmup():
    s = cosine_schedule(1.0, 100, warmup_steps=10, final=0.1)
    assert len(s) == 100 and s[0] == pytest.approx(0.1) and s[9] == pytest.approx(1.0)
    assert s[10] == pytest.approx(1.0) and s[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(a >= b for a, b in zip(s[10:], s[11:]))
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6) and scaled_lr(0.3, 1024, "sqrt") == pytest.approx(0.6)


def test_atomic_save_and_safe_load(tmp_path):
    p = tmp_path / "c.pt"
    ckpt.atomic_save({"w": torch.ones(3), "epoch": 2}, p)
    assert ckpt.load(p)["epoch"] == 2 and not list(tmp_path.glob(".*tmp"))


def test_malicious_pickle_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    p = tmp_path / "evil.pt"
    torch.save({"method": Evil()}, p)
    with pytest.raises(SelfSupError, match="cannot be loaded safely"):
        ckpt.load(p)
    assert not marker.exists()


def test_truncated_checkpoint_falls_back_to_previous(tmp_path):
    ckpt.atomic_save({"epoch": 1}, ckpt.checkpoint_path(tmp_path, 1))
    ckpt.atomic_save({"epoch": 2}, ckpt.checkpoint_path(tmp_path, 2))
    p2 = ckpt.checkpoint_path(tmp_path, 2)
    p2.write_bytes(p2.read_bytes()[:40])
    with pytest.warns(UserWarning, match="falling back"):
        state, path = ckpt.load_latest(tmp_path)
    assert state["epoch"] == 1 and path.name == "epoch-0001.pt"


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    base = TINY + [f"run.dir={tmp_path}", "train.epochs=2", "train.checkpoint_every=1", "train.keep_checkpoints=5"]
    full = pretrain(load_config("simclr", base + ["run.name=full"]), progress=False)
    part = pretrain(load_config("simclr", base + ["run.name=part"]), progress=False)
    ckpt.checkpoint_path(part.run_dir, 2).unlink()  # as if the run died during epoch 2
    resumed = pretrain(None, resume_dir=part.run_dir, progress=False)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(x)["loss"] for x in (r / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]
              for r in (full.run_dir, part.run_dir)]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_run_folder_is_never_overwritten(tmp_path):
    args = TINY + [f"run.dir={tmp_path}", "run.name=r", "train.epochs=1"]
    pretrain(load_config("simclr", args), progress=False)
    with pytest.raises(SelfSupError, match="--resume"):
        pretrain(load_config("simclr", args), progress=False)
    pretrain(load_config("simclr", args), force=True, progress=False)


def test_non_finite_loss_stops_with_a_named_cause(tmp_path):
    args = TINY + [f"run.dir={tmp_path}", "train.epochs=5", "train.lr=1.0e30", "train.optimizer=sgd"]
    with pytest.raises(SelfSupError, match="learning rate too high"):
        pretrain(load_config("simclr", args), progress=False)


class _IndexRegression(torch.nn.Module):
    """A method whose loss depends only on the data set indices: no augmentation, no batch coupling."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(5, 1, bias=False)
        self.register_buffer("table", torch.randn(64, 5, generator=torch.Generator().manual_seed(1)))
        self.steps_seen = []

    def forward(self, views, index):
        return {"loss": (self.backbone(self.table[index]) - 1).pow(2).mean()}

    def on_epoch_start(self, ctx):
        pass

    def on_step_end(self, ctx):
        self.steps_seen.append(ctx.step)


def test_gradient_accumulation_equals_the_large_batch():
    from selfsup.config import TrainConfig
    from selfsup.data.datasets import ArrayDataset
    from selfsup.data.loader import BatchLoader
    from selfsup.data.views import ViewRecipe
    from selfsup.train import fit

    ds = ArrayDataset(torch.zeros(64, 3, 2, 2, dtype=torch.uint8), torch.zeros(64, dtype=torch.long), [])
    results = []
    for batch, acc in [(32, 1), (16, 2)]:
        torch.manual_seed(0)
        m = _IndexRegression()
        cfg = TrainConfig(epochs=3, batch_size=batch, accumulate=acc, optimizer="sgd", lr=0.1, lr_scaling="none",
                          warmup_epochs=0, weight_decay=0.0, precision="fp32")
        res = fit(m, BatchLoader(ds, batch, seed=0), ViewRecipe([]), cfg, progress=False)
        results.append((m.backbone.weight.detach().clone(), res.steps, m.steps_seen))
    (w1, s1, seen1), (w2, s2, seen2) = results
    assert s1 == s2 == 6 and seen1 == seen2 == [1, 2, 3, 4, 5, 6]  # hooks run once per optimizer step
    assert torch.allclose(w1, w2, atol=1e-6)


class _LogsAtEpochEnd(_IndexRegression):
    """Logs a hook metric from on_step_end on the last step of each epoch (as SeLa's relabelling can): the
    trainer takes the step's values after the hook, so the metric is that epoch's, not lost to the next."""

    def on_step_end(self, ctx):
        if ctx.step % ctx.steps_per_epoch == 0:
            ctx.log["hook_value"] = float(ctx.step)


def test_a_hook_metric_logged_by_an_epochs_last_step_lands_in_that_epochs_record():
    from selfsup.config import TrainConfig
    from selfsup.data.datasets import ArrayDataset
    from selfsup.data.loader import BatchLoader
    from selfsup.data.views import ViewRecipe
    from selfsup.train import fit

    ds = ArrayDataset(torch.zeros(64, 3, 2, 2, dtype=torch.uint8), torch.zeros(64, dtype=torch.long), [])
    cfg = TrainConfig(epochs=3, batch_size=32, optimizer="sgd", lr=0.1, lr_scaling="none", warmup_epochs=0,
                      weight_decay=0.0, precision="fp32")
    res = fit(_LogsAtEpochEnd(), BatchLoader(ds, 32, seed=0), ViewRecipe([]), cfg, progress=False)
    assert [h.get("hook_value") for h in res.history] == [2.0, 4.0, 6.0]
