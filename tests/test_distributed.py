"""1 process vs 2 processes (gloo, CPU) on the same global batch: same losses, same weights."""

import pytest
import torch
from distributed import run_distributed

from selfsup.config import load_config
from selfsup.data.loader import BatchLoader
from selfsup.eval.features import eval_batches
from selfsup.models.sync_bn import GlobalBatchNorm
from selfsup.train.checkpoint import seed_everything
from selfsup.train.pretrain import (
    build_method,
    build_views,
    distributed_batchnorm,
    load_train_data,
    resolve_normalization,
)
from selfsup.train.trainer import fit

GLOBAL_BATCH = 16
# compared to 1e-5: fp32 kernels in the default layout, as measured (the last two are the step budget)
TINY = ["data.subset=64", "data.image_size=16", "views.size=16", "model.width=0.125", "train.optimizer=sgd",
        "train.lr=0.5", "train.warmup_epochs=0", "train.epochs=1", "train.precision=fp32", "model.channels_last=false",
        "train.max_steps=2", "train.log_every=1"]
HEAD = ["method.hidden_dim=32", "method.projection_dim=16"]
SMALL_CROPS = ["views.options.local_size=8", "views.options.num_local=2"]

# Every method that looks across the batch, with the piece each case exercises.
CROSS_BATCH = {
    "simclr": HEAD,                                                       # in-batch negatives, gathered with grad
    "simclr_queue": HEAD + ["method.negatives=queue", "method.queue_size=32"],  # queue filled from all ranks
    "invaspread": ["method.embedding_dim=16"],
    "moco_v1": ["method.projection_dim=16", "method.queue_size=32"],        # queue + shuffle-BN across ranks
    "moco_v2": HEAD + ["method.negatives=bank"],                             # memory bank written from all ranks
    "moco_v3": HEAD,                                                     # keys from the momentum encoder, gathered
    # NCE noise drawn for the global batch
    "instdisc": ["method.loss=nce", "method.embedding_dim=16", "method.noise_samples=8"],  # per-row Z_i
    "instdisc_tracked": ["method.loss=nce", "method.embedding_dim=16", "method.noise_samples=8",
                         "method.z=tracked"],                                # Z's estimate: the ranks' mean
    "dim": ["method.feature_dim=32", "method.hidden_dim=32"],               # JSD over gathered local/global pairs
    "dim_infonce": ["method.feature_dim=32", "method.hidden_dim=32", "method.estimator=infonce"],
    "amdim": ["method.feature_dim=32", "method.hidden_dim=32"],
    "clip": ["method.embed_dim=16"],
    "byol": HEAD,                                                        # EMA target identical on every rank
    "relic": HEAD,
    "relicv2": HEAD + SMALL_CROPS,                                        # multi-crop + background removal
    "swav": HEAD + SMALL_CROPS + ["method.num_prototypes=8", "method.queue_length=32",
                                  "method.queue_start_epoch=0", "method.freeze_prototypes_iters=1"],  # Sinkhorn sums
    "deepcluster": ["method.num_clusters=4", "method.pca_dim=8", "method.kmeans_iterations=5"],  # E-step shared
    "sela": ["method.num_clusters=4", "method.num_heads=2", "method.num_label_updates=2"],
    "pcl": HEAD + ["method.num_clusters=[4,8]", "method.queue_size=32", "method.warmup_epochs=0",
                   "method.kmeans_iterations=5"],
    "transitive": ["method.hidden_dim=32", "method.embedding_dim=16", "method.num_clusters=4", "method.neighbors=3"],
}


def _train(rank: int, world: int, case: str):
    torch.set_num_threads(1)
    recipe = case.split("_")[0] if case in ("simclr_queue", "dim_infonce", "instdisc_tracked") else case
    overrides = TINY + CROSS_BATCH[case] + [f"train.batch_size={GLOBAL_BATCH // world}"]
    if recipe in ("moco_v1", "moco_v2"):
        # Shuffle-BN: 4 BatchNorm groups of 4 keys over the global batch, however many processes share it.
        overrides.append(f"method.shuffle_bn_groups={4 // world}")
    cfg = load_config(recipe, overrides)
    seed_everything(cfg.train.seed)
    data = load_train_data(cfg)
    resolve_normalization(cfg, data)
    method = distributed_batchnorm(cfg, build_method(cfg, len(data)))
    loader = BatchLoader(data, cfg.train.batch_size, seed=cfg.train.seed, rank=rank, world_size=world)
    batches = lambda: eval_batches(data, cfg.views.mean, cfg.views.std, cfg.views.size, 32, torch.device("cpu"))  # noqa: E731
    result = fit(method, loader, build_views(cfg, data), cfg.train, None, progress=False, eval_batches=batches)
    return [h["loss"] for h in result.history], {k: v.clone() for k, v in method.state_dict().items()}


@pytest.mark.parametrize("case", list(CROSS_BATCH))
def test_one_process_equals_two(case):
    """One step on a fixed global batch of 16: 1 process, and 2 processes with 8 each, give the
    same losses and the same weights and buffers (queues, banks, EMA copies, cluster state) to
    1e-5 after two optimizer steps, and the two ranks hold identical state."""
    loss1, state1 = _train(0, 1, case)
    results = run_distributed(_train, 2, case)
    if case in ("moco_v1", "moco_v2"):
        # Shuffle-BN keeps BatchNorm per process: its running statistics (evaluation-time only) are
        # each process's own groups', and differ from one process's by design. All else must match.
        per_process = ("running_mean", "running_var", "num_batches_tracked")
        state1 = {k: v for k, v in state1.items() if not k.endswith(per_process)}
    for loss2, state2 in results:
        assert loss2 == pytest.approx(loss1, abs=1e-5)
        for k, v in state1.items():
            assert torch.allclose(v.float(), state2[k].float(), atol=1e-5), k
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in state1)


def test_moco_keeps_per_process_batchnorm_for_shuffle_bn():
    results = run_distributed(_bn_kinds, 2)
    assert results[0] == {"moco_v1": [], "moco_v2": [], "simclr": ["GlobalBatchNorm"]}


def _bn_kinds(rank: int, world: int):
    kinds = {}
    for recipe in ("moco_v1", "moco_v2", "simclr"):
        cfg = load_config(recipe, TINY)
        method = distributed_batchnorm(cfg, build_method(cfg, 64))
        kinds[recipe] = sorted({type(m).__name__ for m in method.modules() if isinstance(m, GlobalBatchNorm)})
    return kinds


def _files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def test_two_process_cli_run_has_the_shape_of_a_one_process_run_and_resumes(tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "selfsup", "pretrain", "simclr", *TINY[:-2], "train.max_steps=null",
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
