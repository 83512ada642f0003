"""SimCLR on the embedded digits, a short CPU budget: the encoder must beat its own random init."""

import torch

from selfsup.config import load_config
from selfsup.train.checkpoint import seed_everything
from selfsup.train.pretrain import build_method, pretrain

# A small, fast recipe: 16 px views, ResNet-18 at 1/8 width, 6 epochs of 22 steps.
SMALL = ["data.image_size=16", "views.size=16", "model.width=0.125", "train.batch_size=64", "train.epochs=6",
         "train.warmup_epochs=0", "train.lr=1.0", "method.hidden_dim=128", "method.projection_dim=64",
         "eval.knn_k=20"]
MARGIN = 10.0  # kNN top-1 points over random init; measured at seed 0: 64.94 -> 87.98 (+23.0), +19.2 at worst


def test_simclr_beats_random_init_on_digits(tmp_path, learning):
    cfg = load_config("simclr", SMALL + learning.overrides + [f"run.dir={tmp_path}"])
    result = pretrain(cfg, progress=False)
    trained = learning.knn_top1(cfg, result.method.backbone)
    seed_everything(cfg.train.seed)
    random_init = learning.knn_top1(cfg, build_method(cfg).backbone)
    # The online monitor measured the same two numbers during training.
    first, last = result.fit.history[0], result.fit.history[-1]
    assert abs(last["knn_top1"] - trained) < 1e-6
    learning.check(trained, random_init, MARGIN)
    assert first["loss"] > last["loss"]
    assert torch.isfinite(torch.tensor(last["loss"]))
