"""Reliability: exact resume, preemption, corrupt checkpoints, divergence and collapse guards, safe loading."""

import io
import json
import math
import os
import signal
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from resume_util import RESUME_CASES, assert_resume_exact
from torch import nn

from selfsup.cli import main
from selfsup.config import TrainConfig, load_config
from selfsup.data.datasets import ArrayDataset, ImageFolder, UnreadableImage, decode_image, open_dataset
from selfsup.data.loader import BatchLoader
from selfsup.data.views import ViewRecipe, ViewSpec
from selfsup.errors import EXIT_PREEMPTED, Preempted, SelfSupError
from selfsup.methods import METHODS
from selfsup.methods.base import Method
from selfsup.train import checkpoint as ckpt
from selfsup.train import fit
from selfsup.train.guards import collapse_stats
from selfsup.train.pretrain import new_run_dir, pretrain
from selfsup.train.signals import PreemptionHandler


@pytest.mark.parametrize("name", sorted(RESUME_CASES))
def test_resume_mid_epoch_is_exact(name, tmp_path):
    assert_resume_exact(RESUME_CASES[name], tmp_path)


class Toy(Method):
    """Index regression with the kinds of state real methods keep: an epoch-start E-step drawing
    from the global RNG into a buffer, an EMA buffer updated per step, views from the generator."""

    def __init__(self, stop_at=None, bad_grad_calls=(), constant_embeddings=False):
        super().__init__(nn.Linear(5, 1, bias=False))
        self.register_buffer("table", torch.randn(64, 5, generator=torch.Generator().manual_seed(1)))
        self.register_buffer("center", torch.zeros(5))
        self.register_buffer("epoch_starts", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema", torch.zeros(1, 5))
        self.stop_at, self.bad_grad_calls, self.constant = stop_at, set(bad_grad_calls), constant_embeddings
        self.calls, self.hook_calls, self.steps_seen, self.weights_seen = 0, 0, [], []

    def training_step(self, views, index):
        self.calls += 1
        self.weights_seen.append(self.backbone.weight.detach().clone())
        x = self.table[index] + self.center + views[0].mean((1, 2, 3))[:, None]
        loss = (self.backbone(x) - 1).pow(2).mean()
        if self.calls in self.bad_grad_calls:  # finite loss (sqrt(0) = 0), infinite gradient
            s = self.backbone.weight.sum()
            loss = loss + torch.sqrt(s - s.detach())
        emb = torch.ones(len(index), 8) if self.constant else torch.randn(len(index), 8)
        return {"loss": loss, "embeddings": emb}

    def on_epoch_start(self, ctx):
        self.hook_calls += 1
        self.epoch_starts += 1
        self.center.copy_(torch.randn(5))

    def on_step_end(self, ctx):
        self.ema.mul_(0.9).add_(self.backbone.weight.detach(), alpha=0.1)
        self.steps_seen.append(ctx.step)
        if ctx.step == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)


DATA = ArrayDataset(torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)),
                    torch.zeros(64, dtype=torch.long), [])
RECIPE = ViewRecipe([ViewSpec(size=4)])


def toy_fit(run_dir=None, resume=None, monitor=None, **kw):
    """3 epochs of 8 steps."""
    torch.manual_seed(0)
    m = Toy(**{k: kw.pop(k) for k in ("stop_at", "bad_grad_calls", "constant_embeddings") if k in kw})
    cfg = TrainConfig(**{**dict(epochs=3, batch_size=8, optimizer="sgd", lr=0.1, lr_scaling="none", warmup_epochs=0,
                                weight_decay=0.0, log_every=1, collapse_every=1, keep_checkpoints=3), **kw})
    res = fit(m, BatchLoader(DATA, 8, seed=0), RECIPE, cfg, run_dir, resume=resume, monitor=monitor, progress=False)
    return m, res


def lines(run_dir):
    return [{k: v for k, v in json.loads(x).items() if k not in ("images_per_s", "epoch_time_s")}
            for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mid_epoch_resume_does_not_rerun_the_epoch_start_hook(tmp_path):
    full, _ = toy_fit(tmp_path / "full")
    with pytest.raises(Preempted, match="SIGTERM at epoch 2, step 11"):
        toy_fit(tmp_path / "part", stop_at=11)
    state, path = ckpt.load_latest(tmp_path / "part", required=ckpt.RESUME_KEYS)
    assert path.name == "epoch-0001-step-00000011.pt" and state["batch_in_epoch"] == 3
    resumed, res = toy_fit(tmp_path / "part", resume=state)
    assert resumed.hook_calls == 1 and int(resumed.epoch_starts) == 3  # only epoch 3 started afresh
    assert resumed.steps_seen == list(range(12, 25)) and res.steps == 24
    assert_same(full, resumed)
    assert lines(tmp_path / "full") == lines(tmp_path / "part")


def test_resume_at_an_epoch_boundary_runs_the_next_epoch_start_hook(tmp_path):
    full, _ = toy_fit(tmp_path / "full")
    with pytest.raises(Preempted):
        toy_fit(tmp_path / "part", stop_at=8)
    state, path = ckpt.load_latest(tmp_path / "part")
    assert path.name == "epoch-0001.pt" and state["batch_in_epoch"] == 0
    resumed, _ = toy_fit(tmp_path / "part", resume=state)
    assert resumed.hook_calls == 2 and int(resumed.epoch_starts) == 3
    assert_same(full, resumed)
    assert lines(tmp_path / "full") == lines(tmp_path / "part")


def _corrupt(path, kind):
    if kind == "truncated mid-write":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("epoch: 3\n")
    elif kind == "not a dict":
        torch.save([torch.ones(2)], path)
    elif kind == "dict of another tool":
        torch.save({"state_dict": {"w": torch.ones(2)}}, path)


@pytest.mark.parametrize("kind", ["truncated mid-write", "empty", "text", "not a dict", "dict of another tool"])
def test_a_broken_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, kind):
    full, _ = toy_fit(tmp_path / "full")
    with pytest.raises(Preempted):
        toy_fit(tmp_path / "part", stop_at=13, checkpoint_every_steps=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "part")]  # keep_checkpoints=3
    assert names == ["epoch-0001-step-00000013.pt", "epoch-0001-step-00000012.pt", "epoch-0001-step-00000010.pt"]
    _corrupt(tmp_path / "part" / "checkpoints" / names[0], kind)
    with pytest.warns(UserWarning, match="falling back"):
        state, path = ckpt.load_latest(tmp_path / "part", required=ckpt.RESUME_KEYS)
    assert path.name == names[1] and state["step"] == 12
    resumed, _ = toy_fit(tmp_path / "part", resume=state)
    assert_same(full, resumed)
    assert lines(tmp_path / "full") == lines(tmp_path / "part")


def test_malicious_pickle_is_refused_without_running_and_the_previous_used(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt.atomic_save({"epoch": 1}, ckpt.checkpoint_path(tmp_path, 1))
    torch.save({"epoch": 2, "method": Evil()}, ckpt.checkpoint_path(tmp_path, 2))
    with pytest.warns(UserWarning, match="cannot be loaded safely"):
        state, path = ckpt.load_latest(tmp_path)
    assert state == {"epoch": 1} and not marker.exists()


def test_keep_last_k_and_best_by_knn(tmp_path):
    scores = iter([10.0, 20.0, 50.0, 30.0])  # before training, then after epochs 1, 2, 3
    _, res = toy_fit(tmp_path, monitor=lambda backbone: {"top1": next(scores)}, knn_every=1, checkpoint_every=1,
                     keep_checkpoints=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["epoch-0003.pt", "epoch-0002.pt"]
    best = ckpt.load(ckpt.best_path(tmp_path))
    assert best["epoch"] == 2 and best["loop"]["best_knn_top1"] == 50.0
    assert [r["knn_top1"] for r in res.history] == [20.0, 50.0, 30.0]


def test_non_finite_gradients_skip_the_step_and_are_counted(tmp_path):
    m, res = toy_fit(tmp_path, bad_grad_calls={3, 4})
    assert res.skipped_steps == 2 and res.steps == 22  # the skipped batches made no step
    assert torch.equal(m.weights_seen[2], m.weights_seen[3]) and torch.equal(m.weights_seen[3], m.weights_seen[4])
    assert not torch.equal(m.weights_seen[4], m.weights_seen[5])
    assert m.steps_seen == list(range(1, 23))  # no on_step_end (EMA update) for skipped steps
    recs = lines(tmp_path)
    assert [r["skipped_non_finite"] for r in recs if "skipped_non_finite" in r] == ["gradients", "gradients"]
    assert [r["skipped_steps"] for r in recs if r.get("type") == "epoch"] == [2, 2, 2]


def test_non_finite_gradients_in_a_row_stop_with_likely_causes():
    with pytest.raises(SelfSupError, match="gradients were not finite for 10 steps in a row.*learning rate"):
        toy_fit(bad_grad_calls=range(1, 100))


def test_collapse_is_logged_and_warned_once(tmp_path):
    with pytest.warns(UserWarning, match="embeddings look collapsed") as record:
        toy_fit(tmp_path, constant_embeddings=True)
    assert sum("collapsed" in str(w.message) for w in record) == 1
    step = [r for r in lines(tmp_path) if "collapse_std" in r]
    assert len(step) == 24 and step[0]["collapse_std"] == 0.0 and step[0]["effective_rank"] == pytest.approx(1.0)


def test_collapse_stats_of_spread_and_collapsed_embeddings():
    spread = collapse_stats(torch.randn(512, 16))
    assert spread["collapse_std"] * 16**0.5 == pytest.approx(1.0, abs=0.05) and spread["effective_rank"] > 14
    one = collapse_stats(torch.randn(1, 16).expand(512, 16) * torch.rand(512, 1))
    assert one["collapse_std"] < 1e-6 and one["effective_rank"] == pytest.approx(1.0, abs=1e-3)


def test_second_signal_stops_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="second signal"), PreemptionHandler() as h:
        os.kill(os.getpid(), signal.SIGTERM)
        assert h.requested == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_handlers_are_only_installed_from_the_main_thread():
    enabled = []
    t = threading.Thread(target=lambda: enabled.append(PreemptionHandler().__enter__().enabled))
    t.start()
    t.join()
    assert enabled == [False]


def test_cli_exits_75_on_sigterm_and_resumes(tmp_path, monkeypatch, capsys):
    class Stopping(METHODS["simclr"]):
        def on_step_end(self, ctx):
            super().on_step_end(ctx)
            if ctx.step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setitem(METHODS, "simclr", Stopping)
    args = ["pretrain", "simclr", "data.subset=64", "data.image_size=16", "views.size=16", "model.width=0.125",
            "train.batch_size=32", "method.hidden_dim=32", "method.projection_dim=16", "train.epochs=1",
            f"run.dir={tmp_path}", "run.name=r", "--quiet"]
    assert main(args) == EXIT_PREEMPTED == 75
    err = capsys.readouterr().err
    assert "stopped by SIGTERM at epoch 1, step 1" in err and f"--resume {tmp_path / 'r'}" in err
    monkeypatch.undo()
    assert main(["pretrain", "--resume", str(tmp_path / "r"), "--quiet"]) == 0
    assert ckpt.load_latest(tmp_path / "r")[0]["step"] == 2


def test_yaml_with_a_python_tag_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.yaml"
    bad.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SelfSupError, match="refusing a YAML tag"):
        load_config(str(bad))
    assert not marker.exists()


def test_force_clears_the_old_runs_files(tmp_path):
    cfg = load_config("simclr", [f"run.dir={tmp_path}", "run.name=r"])
    old = tmp_path / "r"
    ckpt.atomic_save({"epoch": 9}, ckpt.checkpoint_path(old, 9))
    (old / "metrics.jsonl").write_text("{}\n")
    (old / "notes.md").write_text("mine")
    with pytest.raises(SelfSupError, match="--resume"):
        new_run_dir(cfg)
    assert new_run_dir(cfg, force=True) == old
    assert sorted(p.name for p in old.iterdir()) == ["notes.md"]  # no stale checkpoint can be resumed


# Hostile and odd inputs ------------------------------------------------------------------------

def _png(path, size=(20, 24), seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _png_header_only(w, h):
    """A PNG that declares w x h pixels and holds none: the cheapest decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _deny(monkeypatch, name):
    """Root ignores file modes, so an unreadable file is simulated where Pillow opens it."""
    real = PIL.Image.open

    def fake_open(fp, *args, **kw):
        if str(fp).endswith(name):
            raise PermissionError(13, "Permission denied", str(fp))
        return real(fp, *args, **kw)

    monkeypatch.setattr(PIL.Image, "open", fake_open)


def _seed_bad_files(d, monkeypatch):
    """Every kind of bad file; returns their names."""
    _png(d / "trunc.png")
    (d / "trunc.png").write_bytes((d / "trunc.png").read_bytes()[:300])
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(d / "trunc.jpg")
    (d / "trunc.jpg").write_bytes((d / "trunc.jpg").read_bytes()[:-200])
    (d / "zero.png").write_bytes(b"")
    (d / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    _png(d / "large.png", size=(200, 200))  # 40,000 pixels: above data.max_pixels=20000
    (d / "fake.jpg").write_text("not an image at all")
    os.symlink(d / "nowhere.png", d / "dangling.png")
    _png(d / "denied.png")
    _deny(monkeypatch, "denied.png")
    return ["bomb.png", "dangling.png", "denied.png", "fake.jpg", "large.png", "trunc.jpg", "trunc.png", "zero.png"]


def test_16_bit_png_and_cmyk_jpeg_convert_correctly(tmp_path):
    deep = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)[::-1].copy()  # the full 16-bit range
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    img = decode_image(tmp_path / "deep.png", 16)
    assert torch.equal(img[0], torch.from_numpy((deep // 257).astype(np.uint8))) and torch.equal(img[0], img[2])
    Image.new("RGB", (16, 16), (200, 30, 60)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    rgb = decode_image(tmp_path / "cmyk.jpg", 8)
    assert (rgb.int() - torch.tensor([200, 30, 60])[:, None, None]).abs().max() <= 3


def test_each_kind_of_bad_file_is_one_clear_error(tmp_path, monkeypatch):
    names = _seed_bad_files(tmp_path, monkeypatch)
    expect = {"bomb.png": "above data.max_pixels", "large.png": "above data.max_pixels", "zero.png": "cannot identify",
              "fake.jpg": "cannot identify", "trunc.png": "truncated", "trunc.jpg": "(?i)truncated",
              "dangling.png": "FileNotFoundError", "denied.png": "PermissionError"}
    for name in names:
        with pytest.raises(UnreadableImage, match=expect[name]) as e:
            decode_image(tmp_path / name, 16, max_pixels=20_000)
        assert str(e.value).startswith(str(tmp_path / name))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode (simulated above instead)")
def test_a_file_without_read_permission_is_a_bad_file(tmp_path):
    _png(tmp_path / "locked.png")
    (tmp_path / "locked.png").chmod(0)
    with pytest.raises(UnreadableImage, match="PermissionError"):
        decode_image(tmp_path / "locked.png", 8)


def test_folder_scan_links_loops_empty_classes_and_other_files(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        _png(tmp_path / c / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("no images here")
    os.symlink(tmp_path, tmp_path / "a" / "up")  # inside a class: never followed
    os.symlink(tmp_path, tmp_path / "loop")  # a class folder that is the root itself
    with pytest.warns(UserWarning) as record:
        folder = ImageFolder(tmp_path, 8)
    assert any("would loop" in str(w.message) for w in record)
    assert any("without images: empty (kept" in str(w.message) for w in record)
    assert folder.classes == ["a", "b", "empty"] and folder.labels.tolist() == [0, 1]
    r = folder.report.to_dict()
    assert r["images"] == 2 and r["ignored_non_image_files"] == 2 and r["empty_classes"] == ["empty"]
    assert r["skipped_links"] == [str(tmp_path / "loop")]


def test_labels_that_disagree_with_the_images_are_a_clear_error(tmp_path):
    np.save(tmp_path / "train_x.npy", np.zeros((10, 8, 8, 3), np.uint8))
    np.save(tmp_path / "train_y.npy", np.zeros(9, np.int64))
    with pytest.raises(SelfSupError, match="10 images but 9 labels"):
        open_dataset(tmp_path, "train")


def test_failures_in_loader_workers_are_counted_in_the_main_process(tmp_path):
    for i in range(6):
        _png(tmp_path / f"{i}.png", seed=i)
    for i in (1, 4):
        (tmp_path / f"{i}.png").write_bytes(b"broken")
    folder = ImageFolder(tmp_path, 8)
    loader = BatchLoader(folder, 3, num_workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    assert loader.failed == {1, 4} and sum(len(b[2]) for b in batches) == 6
    assert all(b[0].shape[1:] == (3, 8, 8) for b in batches)


def test_a_folder_of_every_bad_file_kind_trains_to_the_end_and_reports_them(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
    for i in range(37):
        _png(root / "ab"[i % 2] / f"{i:02d}.png", seed=i)
    Image.fromarray(np.arange(16 * 20, dtype=np.uint16).reshape(16, 20) * 200).save(root / "a" / "deep16.png")
    Image.new("RGB", (20, 16), (10, 200, 90)).convert("CMYK").save(root / "b" / "cmyk.jpg")
    bad = _seed_bad_files(root / "b", monkeypatch)  # 37 + 2 + 8 = 47 files, +1 below = 48 = 3 batches of 16
    _png(root / "b" / "extra.png", seed=99)
    (root / "b" / "labels.csv").write_text("ignored\n")
    (root / "c" / "README").write_text("an empty class")
    os.symlink(root, root / "a" / "loop")
    args = [f"data.path={root}", "data.image_size=16", "data.in_memory=false", "data.max_pixels=20000",
            "views.size=16", "views.mean=[0.5,0.5,0.5]", "views.std=[0.25,0.25,0.25]", "model.width=0.125",
            "train.batch_size=16", "train.epochs=2", "method.hidden_dim=32", "method.projection_dim=16",
            f"run.dir={tmp_path}", "run.name=r"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pretrain(load_config("simclr", args), progress=False)
    assert result.fit.steps == 6
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert sorted(Path(f).name for f in report["bad"]) == bad and report["bad_files"] == 8
    assert report["images"] == 48 and report["ignored_non_image_files"] == 2 and report["empty_classes"] == ["c"]
    assert "above data.max_pixels" in report["bad"][str(root / "b" / "bomb.png")]
    epochs = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"type"' in x]
    assert [e["unreadable_images"] for e in epochs] == [8, 8] and all(math.isfinite(e["loss"]) for e in epochs)


def _encoded(fmt: str, mode: str) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(len(fmt)).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = [_encoded(f, m) for f, m in [("PNG", "RGB"), ("PNG", "P"), ("JPEG", "RGB"), ("JPEG", "CMYK"), ("GIF", "P"),
                                      ("BMP", "RGB"), ("TIFF", "RGB"), ("WEBP", "RGB"), ("PNG", "I;16")]]


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10_000)), noise=st.binary(max_size=64))
def test_fuzzed_image_bytes_decode_or_raise_the_counted_error(seed, edits, cut, noise):
    data = bytearray(seed)
    for pos, byte in edits:
        data[pos % len(data)] = byte
    data = bytes(data[:cut] if cut is not None else data) + noise
    try:
        img = decode_image(data, 8, max_pixels=1_000_000)
    except UnreadableImage:
        return
    assert img.dtype == torch.uint8 and img.shape == (3, 8, 8)
