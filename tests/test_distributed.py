"""1 process vs 2 processes (gloo, CPU) on the same global batch: same losses, same weights."""

import pytest
import torch
from distributed import run_distributed

from selfsup.config import load_config
from selfsup.data.loader import BatchLoader
from selfsup.models.sync_bn import convert_to_global_bn
from selfsup.train.checkpoint import seed_everything
from selfsup.train.pretrain import build_method, build_views, load_train_data, resolve_normalization
from selfsup.train.trainer import fit

GLOBAL_BATCH = 16
TINY = ["data.subset=64", "data.image_size=16", "views.size=16", "model.width=0.125", "train.optimizer=sgd",
        "train.lr=0.5", "train.warmup_epochs=0", "train.epochs=1", "train.max_steps=2", "train.log_every=1",
        "method.hidden_dim=32", "method.projection_dim=16"]


def _train(rank: int, world: int, overrides: list[str]):
    torch.set_num_threads(1)
    cfg = load_config("simclr", TINY + overrides + [f"train.batch_size={GLOBAL_BATCH // world}"])
    seed_everything(cfg.train.seed)
    data = load_train_data(cfg)
    resolve_normalization(cfg, data)
    method = convert_to_global_bn(build_method(cfg, len(data)))
    loader = BatchLoader(data, cfg.train.batch_size, seed=cfg.train.seed, rank=rank, world_size=world)
    result = fit(method, loader, build_views(cfg), cfg.train, None, progress=False)
    return result.history[-1]["loss"], {k: v.clone() for k, v in method.state_dict().items()}


@pytest.mark.parametrize("overrides", [[]], ids=["simclr"])
def test_one_process_equals_two(overrides):
    loss1, state1 = _train(0, 1, overrides)
    results = run_distributed(_train, 2, overrides)
    for loss2, state2 in results:
        assert loss2 == pytest.approx(loss1, abs=1e-5)
        for k, v in state1.items():
            assert torch.allclose(v.float(), state2[k].float(), atol=1e-5), k
    # and the two ranks hold identical weights
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in state1)


def _files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def test_two_process_cli_run_has_the_shape_of_a_one_process_run_and_resumes(tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "selfsup", "pretrain", "simclr", *TINY[:-3], "train.max_steps=null",
            "train.epochs=2", "train.batch_size=16", "train.checkpoint_every=1", f"run.dir={tmp_path}",
            "method.hidden_dim=32", "--quiet"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    one = subprocess.run(base + ["run.name=one"], capture_output=True, text=True, env=env)
    two = subprocess.run(base + ["run.name=two", "--devices", "2"], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    import json
    loss = [[json.loads(x)["loss"] for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]
            for n in ("one", "two")]
    assert loss[0] == pytest.approx(loss[1], abs=1e-4)  # global BN and gathers: the same training
    (tmp_path / "two" / "checkpoints" / "epoch-0002.pt").unlink()
    again = subprocess.run([sys.executable, "-m", "selfsup", "pretrain", "--resume", str(tmp_path / "two"),
                            "--devices", "2", "--quiet"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "two" / "checkpoints" / "epoch-0002.pt").exists()
