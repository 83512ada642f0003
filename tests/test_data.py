import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.datasets import ArrayDataset, ImageFolder, open_dataset
from selfsup.data.loader import BatchLoader
from selfsup.errors import SelfSupError


def test_digits_default_is_real_labelled_and_split():
    train, test = open_dataset("digits", "train"), open_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert sorted(train.labels.unique().tolist()) == list(range(10))
    img, label, idx = train[5]
    assert img.shape == (3, 32, 32) and 0 <= label < 10 and idx == 5


def test_numpy_folder_nhwc_and_grayscale(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train_x.npy", rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    np.save(tmp_path / "train_y.npy", np.arange(10) % 3)
    np.save(tmp_path / "test_x.npy", rng.integers(0, 256, (4, 8, 8), dtype=np.uint8))  # NHW grayscale
    np.save(tmp_path / "test_y.npy", np.arange(4) % 3)
    tr, te = open_dataset(tmp_path, "train"), open_dataset(tmp_path, "test")
    x = np.load(tmp_path / "train_x.npy")
    assert torch.equal(tr.images[3], torch.from_numpy(x[3]).permute(2, 0, 1))
    assert te.images.shape == (4, 3, 8, 8) and torch.equal(te.images[:, 0], te.images[:, 2])
    assert open_dataset(tmp_path, "train", image_size=16).images.shape == (10, 3, 16, 16)


def test_cifar_pickle_layout(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        with open(d / name, "wb") as fh:
            pickle.dump(batch, fh)
    with open(d / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird", b"cat"]}, fh)
    tr = open_dataset(tmp_path, "train")
    assert len(tr) == 20 and tr.classes[:2] == ["airplane", "automobile"] and tr.labels[:4].tolist() == [0, 1, 2, 3]
    with open(d / "data_batch_1", "rb") as fh:
        first = pickle.load(fh)[b"data"][0].reshape(3, 32, 32)
    assert torch.equal(tr.images[0], torch.from_numpy(first))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with open(d / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": Evil()}, fh)
    with pytest.raises(SelfSupError, match="refusing to unpickle"):
        open_dataset(tmp_path, "train")


def _write_idx(path, arr, gz):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_layout(tmp_path, gz):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 28, 28))
    ext = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", x, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", np.arange(6), gz)
    ds = open_dataset(tmp_path, "train")
    assert ds.images.shape == (6, 3, 28, 28) and ds.labels.tolist() == list(range(6))
    assert torch.equal(ds.images[2, 1], torch.from_numpy(x[2].astype(np.uint8)))


def _save(path, mode, size=(20, 12), fmt=None):
    arr = np.random.default_rng(abs(hash(path.name)) % 2**32).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    im = Image.fromarray(arr, "RGBA").convert(mode)
    im.save(path, format=fmt)


def test_image_folder_with_classes_modes_formats_and_a_corrupt_file(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    _save(tmp_path / "cat" / "a.png", "RGBA")
    _save(tmp_path / "cat" / "b.jpg", "L")
    _save(tmp_path / "cat" / "c.bmp", "RGB")
    _save(tmp_path / "dog" / "d.webp", "RGB")
    _save(tmp_path / "dog" / "e.gif", "P")
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="skipped 1 of 6"):
        ds = ImageFolder(tmp_path, image_size=10).load_all(max_bad_fraction=0.5, progress=False)
    assert isinstance(ds, ArrayDataset) and ds.images.shape == (5, 3, 10, 10) and ds.skipped == 1
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0, 1, 1]


def test_image_folder_too_many_bad_files_fails_clearly(tmp_path):
    for i in range(3):
        (tmp_path / f"x{i}.jpg").write_bytes(b"garbage")
    _save(tmp_path / "ok.png", "RGB")
    with pytest.raises(SelfSupError, match="3 of 4 images could not be read"), pytest.warns(UserWarning):
        open_dataset(tmp_path, "train", image_size=8)


def test_flat_folder_is_unlabelled_and_streaming_skips_bad_files(tmp_path):
    for i in range(3):
        _save(tmp_path / f"{i}.png", "RGB", size=(40, 30))
    (tmp_path / "3.png").write_bytes(b"")
    folder = open_dataset(tmp_path, "train", image_size=16, in_memory=False)
    assert folder.labels.tolist() == [-1] * 4
    with pytest.warns(UserWarning, match="skipping unreadable"):
        img, label, idx = folder[3]
    assert img.shape == (3, 16, 16) and idx == 3


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(SelfSupError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(SelfSupError, match="no images found"):
        open_dataset(tmp_path)
    (tmp_path / "f.npy").write_bytes(b"")
    with pytest.raises(SelfSupError, match="is a file"):
        open_dataset(tmp_path / "f.npy")


def test_loader_shards_one_global_batch_across_ranks_and_resumes():
    ds = ArrayDataset(torch.zeros(20, 3, 4, 4, dtype=torch.uint8), torch.arange(20), [])
    one = BatchLoader(ds, 8, seed=3)
    one.set_epoch(2)
    full = [i for _, _, i in one]
    two = [BatchLoader(ds, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for ld in two:
        ld.set_epoch(2)
    halves = [list(ld) for ld in two]
    assert len(full) == 2 == len(halves[0])
    for b in range(2):
        assert torch.equal(full[b], torch.cat([halves[0][b][2], halves[1][b][2]]))
    assert torch.equal(list(one.iter_from(1))[0][2], full[1])
    with pytest.raises(SelfSupError, match="fewer than one batch"):
        BatchLoader(ds, 32)


def test_loader_batches_the_methods_epoch_order():
    ds = ArrayDataset(torch.zeros(20, 3, 4, 4, dtype=torch.uint8), torch.arange(20), [])
    loader = BatchLoader(ds, 8, seed=3)
    loader.set_epoch(1)
    order = loader.order()
    loader.reorder = lambda o: o.flip(0) % 5  # a method's own sampling: repeats allowed
    batches = [i for _, _, i in loader]
    assert torch.equal(torch.cat(batches), (order.flip(0) % 5)[:16])  # drop_last: two batches of 8
    assert torch.equal(list(loader.iter_from(1))[0][2], batches[1])  # and a mid-epoch resume sees the same
    loader.reorder = lambda o: o[:10]
    with pytest.raises(SelfSupError, match="one index per image"):
        list(loader)
