"""Data sets: uint8 images, a label (or -1) and the data set index.

Every data set here yields ``(image uint8 (3, H, W), label int, index int)``. Images of one data
set share one size, so a batch is one uint8 tensor and all augmentation happens later, in batch,
on the training device (see ``selfsup.data.augment``).

Sources understood by :func:`open_dataset`:

- ``digits`` (the default): scikit-learn's 1,797 real 8x8 handwritten digits, shipped with the
  package, upsampled to 32x32 RGB; needs no download. Split 80/20 by a fixed, stratified seed.
- a folder of NumPy arrays ``train_x.npy``, ``train_y.npy``, ``test_x.npy``, ``test_y.npy``
  (NHWC uint8 or NHW grayscale), e.g. ``../shared/data/cifar10``;
- the CIFAR-10/100 python-pickle layout (``cifar-10-batches-py/``, ``cifar-100-python/``);
- IDX files in the MNIST / Fashion-MNIST layout (``train-images-idx3-ubyte[.gz]``, ...);
- an image folder: class sub-folders (labelled) or a flat folder (unlabelled), optionally with
  ``train/`` and ``test/`` sub-folders; JPEG, PNG, WebP, BMP, GIF, TIFF; any mode is converted
  to RGB. Images are resized (shorter side) and centre-cropped to ``image_size``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selfsup.errors import SelfSupError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class ArrayDataset:
    """An in-memory data set: one uint8 tensor (N, 3, H, W) and int64 labels (-1 when unknown).

    Holding the whole set as one tensor lets the loader cut a batch with one indexing op (and lets
    it live on the GPU), which is what keeps the data path from ever starving the model.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    name: str = ""
    skipped: int = 0  # unreadable files left out when the set was built
    report: DataReport | None = None  # what building it from an image folder found

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise SelfSupError(
                f"data set {self.name!r}: images must be uint8 (N, 3, H, W), got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.labels) != len(self.images):
            raise SelfSupError(
                f"data set {self.name!r}: {len(self.images)} images but {len(self.labels)} labels; "
                "the labels file must have one entry per image"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        return self.images[i], int(self.labels[i]), i

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max().item()) + 1

    def subset(self, index: Tensor | Sequence[int], name: str | None = None) -> ArrayDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        return ArrayDataset(self.images[index], self.labels[index], self.classes, name or self.name, self.skipped,
                            self.report)

    def channel_stats(self, max_images: int = 10000) -> tuple[list[float], list[float]]:
        """Per-channel mean and std in [0, 1] units, from up to ``max_images`` evenly spaced images."""
        step = max(1, len(self) // max_images)
        x = self.images[::step].float().div_(255)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()]


def _to_nchw_rgb(x: np.ndarray, source: str) -> Tensor:
    """NHWC / NHW / NCHW uint8 arrays -> uint8 (N, 3, H, W) tensor."""
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and x.min() >= 0 and x.max() <= 1:
            x = np.round(x * 255)
        elif x.size and (x.min() < 0 or x.max() > 255):
            raise SelfSupError(f"{source}: pixel values outside 0..255 ({x.min()}..{x.max()}); save uint8 images")
        x = x.astype(np.uint8)
    if x.ndim == 3:  # NHW grayscale
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise SelfSupError(f"{source}: expected images as (N, H, W) or (N, H, W, C), got shape {x.shape}")
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    elif x.shape[1] == 4:
        x = x[:, :3]
    elif x.shape[1] != 3:
        raise SelfSupError(f"{source}: expected 1, 3 or 4 channels, got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x))


def _resize_uint8(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def load_digits(split: str = "train", image_size: int = 32) -> ArrayDataset:
    """scikit-learn's digits (real 8x8 scans, 16 grey levels), upsampled to ``image_size`` RGB.

    A fixed stratified 80/20 split (seed 0) gives 1,437 train and 360 test images.
    """
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.permutation(idx)[: round(0.2 * len(idx))]] = True
    keep = ~test if split == "train" else test
    images = _resize_uint8(_to_nchw_rgb(x[keep], "digits"), image_size)
    return ArrayDataset(images, torch.from_numpy(y[keep]), [str(i) for i in range(10)], f"digits/{split}")


def load_numpy_folder(path: Path, split: str) -> ArrayDataset:
    x_file, y_file = path / f"{split}_x.npy", path / f"{split}_y.npy"
    if not x_file.exists():
        raise SelfSupError(f"{path}: no {x_file.name}; a NumPy data folder needs {split}_x.npy (and {split}_y.npy)")
    x = np.load(x_file, allow_pickle=False)
    y = np.load(y_file, allow_pickle=False).astype(np.int64).reshape(-1) if y_file.exists() else None
    images = _to_nchw_rgb(x, str(x_file))
    labels = torch.from_numpy(y) if y is not None else torch.full((len(images),), -1, dtype=torch.long)
    classes_file = path / "classes.txt"
    classes = classes_file.read_text().split() if classes_file.exists() else []
    return ArrayDataset(images, labels, classes, f"{path.name}/{split}")


def _find_cifar_dir(path: Path) -> Path | None:
    for cand in (path, path / "cifar-10-batches-py", path / "cifar-100-python"):
        if (cand / "data_batch_1").exists() or (cand / "train").is_file():
            return cand
    return None


def load_cifar_pickle(path: Path, split: str) -> ArrayDataset:
    """The CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``) pickles."""
    cifar10 = (path / "data_batch_1").exists()
    if cifar10:
        files = [path / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [path / "test_batch"]
    else:
        files = [path / ("train" if split == "train" else "test")]
    xs, ys = [], []
    for f in files:
        if not f.exists():
            raise SelfSupError(f"{path}: missing {f.name}; is the CIFAR folder complete?")
        with open(f, "rb") as fh:
            # The official CIFAR batches are pickles of plain dicts of arrays and lists; an
            # unpickler restricted to those types refuses anything that could run code.
            d = _SafeUnpickler(fh).load()
        xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[b"labels" if cifar10 else b"fine_labels"], dtype=np.int64))
    meta = path / ("batches.meta" if cifar10 else "meta")
    classes: list[str] = []
    if meta.exists():
        with open(meta, "rb") as fh:
            m = _SafeUnpickler(fh).load()
        classes = [c.decode() for c in m.get(b"label_names", m.get(b"fine_label_names", []))]
    return ArrayDataset(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), classes,
                        f"{'cifar10' if cifar10 else 'cifar100'}/{split}")


class _SafeUnpickler(pickle.Unpickler):
    _allowed = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}

    def __init__(self, fh):
        super().__init__(fh, encoding="bytes")

    def find_class(self, module: str, name: str):
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise SelfSupError(f"refusing to unpickle {module}.{name}: not a plain CIFAR batch file")


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (MNIST layout): magic 0x0000 + type byte + ndim byte, big-endian sizes, data."""
    with _open_maybe_gz(path) as fh:
        header = fh.read(4)
        if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] != 0x08:
            raise SelfSupError(f"{path}: not an unsigned-byte IDX file (bad magic {header!r})")
        ndim = header[3]
        dims = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
        data = np.frombuffer(fh.read(), dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise SelfSupError(f"{path}: truncated IDX file ({data.size} values, header says {dims})")
    return data.reshape(dims)


def _find_idx(path: Path, prefix: str, kind: str) -> Path | None:
    for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte",):
        for cand in (path / name, path / f"{name}.gz"):
            if cand.exists():
                return cand
    return None


def load_idx_folder(path: Path, split: str) -> ArrayDataset:
    prefix = "train" if split == "train" else "t10k"
    xf, yf = _find_idx(path, prefix, "images"), _find_idx(path, prefix, "labels")
    if xf is None:
        raise SelfSupError(f"{path}: no {prefix}-images-idx3-ubyte[.gz]")
    images = _to_nchw_rgb(read_idx(xf), str(xf))
    labels = torch.from_numpy(read_idx(yf).astype(np.int64)) if yf else torch.full((len(images),), -1)
    return ArrayDataset(images, labels, [], f"{path.name}/{split}")


class UnreadableImage(SelfSupError):
    """An image file that cannot be used: unreadable, truncated, corrupt, not an image, or too large."""


@dataclass
class DataReport:
    """What scanning and decoding an image folder found; written to the run as ``data_report.json``."""

    root: str
    images: int = 0  # files with an image extension
    ignored: int = 0  # other files (no image extension), left out silently
    bad: dict[str, str] = field(default_factory=dict)  # file -> why it could not be used
    empty_classes: list[str] = field(default_factory=list)  # class folders without images (indices kept)
    skipped_links: list[str] = field(default_factory=list)  # symlinked folders that loop back

    def to_dict(self) -> dict:
        return {"root": self.root, "images": self.images, "ignored_non_image_files": self.ignored,
                "bad_files": len(self.bad), "bad": self.bad, "empty_classes": self.empty_classes,
                "skipped_links": self.skipped_links}


def _to_rgb(im):
    """Any Pillow mode -> 8-bit RGB. 16-bit grayscale keeps its full range (Pillow's own
    conversion clips it at 255, turning most of the image white); CMYK, palette, alpha and
    1-bit images convert as Pillow defines them (Adobe-inverted CMYK JPEGs included)."""
    from PIL import Image

    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(im).astype(np.float32) / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def decode_image(source: str | os.PathLike | bytes, image_size: int, max_pixels: int = 89_478_485) -> Tensor:
    """Decode one image file (a path or its bytes) to uint8 ``(3, image_size, image_size)``.

    The shorter side is resized to ``image_size`` (bicubic), then the centre is cropped. Every
    failure (missing or unreadable file, truncated or corrupt data, not an image, more than
    ``max_pixels`` pixels: a decompression bomb) raises :class:`UnreadableImage`; the size is
    checked from the header, before any pixel is decoded. Pillow refuses images above twice
    its own limit (about 179 million pixels) whatever ``max_pixels`` says.
    """
    import io

    from PIL import Image

    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's bomb warning (checked below) and palette notes
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise UnreadableImage(f"{name}: {w}x{h} = {w * h:,} pixels, above data.max_pixels={max_pixels:,} "
                                          "(a decompression bomb?); raise data.max_pixels if it is real")
                if w < 1 or h < 1:
                    raise UnreadableImage(f"{name}: empty image ({w}x{h})")
                im.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced size
                im = _to_rgb(im)
                w, h = im.size
                s = image_size / min(w, h)
                im = im.resize((max(image_size, round(w * s)), max(image_size, round(h * s))), Image.BICUBIC)
                w, h = im.size
                left, top = (w - image_size) // 2, (h - image_size) // 2
                arr = np.asarray(im.crop((left, top, left + image_size, top + image_size)), dtype=np.uint8)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"{name}: {e} (above data.max_pixels={max_pixels:,} or Pillow's own limit)") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on hostile data; all mean "unusable"
        reason = str(e).splitlines()[0] if str(e) else ""
        raise UnreadableImage(f"{name}: {type(e).__name__}: {reason}") from None
    if arr.shape != (image_size, image_size, 3):
        raise UnreadableImage(f"{name}: decoded to shape {arr.shape}, not {image_size}x{image_size} RGB")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ImageFolder:
    """Image files under a folder: class sub-folders give labels, a flat folder gives -1.

    Files are decoded on access (in loader workers) and resized so the shorter side is
    ``image_size``, then centre-cropped, so every item has one size. Unreadable files are
    replaced by a neighbour and counted, so a broken file never stops an epoch.

    Class indices are the sorted class folder names, empty folders included: a class folder
    without images is kept (with a warning) so that labels stay the same across splits and runs.
    Files without an image extension are ignored; a file with one that is not a readable image
    is a bad file. Symlinked class folders are followed unless they point back at the root or
    above it (a loop); inside a class folder, symlinked sub-folders are never followed.
    """

    def __init__(self, root: Path, image_size: int = 32, max_pixels: int = 89_478_485):
        self.root = Path(root)
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.report = DataReport(str(self.root))
        resolved = self.root.resolve()
        subdirs = []
        for d in sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")):
            if d.is_symlink() and resolved.is_relative_to(d.resolve()):
                self.report.skipped_links.append(str(d))
                warnings.warn(f"ignoring {d}: a symlink to {d.resolve()} would loop", stacklevel=2)
            else:
                subdirs.append(d)
        files: list[Path] = []
        labels: list[int] = []
        if subdirs:
            self.classes = [d.name for d in subdirs]
            for c, d in enumerate(subdirs):
                found = self._scan(d)
                if not found:
                    self.report.empty_classes.append(d.name)
                files += found
                labels += [c] * len(found)
            files += (loose := self._scan(self.root, recursive=False))
            labels += [-1] * len(loose)
        else:
            self.classes = []
            files = self._scan(self.root)
            labels = [-1] * len(files)
        if not files:
            raise SelfSupError(
                f"{self.root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "point data.path at a folder of images, class sub-folders, or a NumPy/CIFAR/IDX folder"
            )
        if self.report.empty_classes:
            warnings.warn(f"{self.root}: class folders without images: {', '.join(self.report.empty_classes)} "
                          "(kept, so class indices stay stable)", stacklevel=2)
        self.files = files
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.name = self.root.name
        self.failed: set[int] = set()

    def _scan(self, folder: Path, recursive: bool = True) -> list[Path]:
        found, ignored = _scan_images(folder, recursive)
        self.report.images += len(found)
        self.report.ignored += ignored
        return found

    def __len__(self) -> int:
        return len(self.files)

    def decode(self, i: int) -> Tensor:
        return decode_image(self.files[i], self.image_size, self.max_pixels)

    def get(self, i: int) -> tuple[Tensor, int, int, bool]:
        """Item ``i`` plus whether file ``i`` itself was unreadable (then a neighbour stands in).

        Loader workers are separate processes, so the flag travels with the batch and the main
        process counts the failures (see :class:`selfsup.data.loader.BatchLoader`).
        """
        for j in range(len(self.files)):
            k = (i + j) % len(self.files)
            try:
                return self.decode(k), int(self.labels[k]), i, j > 0
            except UnreadableImage as e:
                if k not in self.failed:
                    self.failed.add(k)
                    warnings.warn(f"skipping unreadable image {e}", stacklevel=2)
        raise SelfSupError(f"{self.root}: none of the {len(self.files)} images could be read")

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        return self.get(i)[:3]

    def note_failures(self, indices: set[int]) -> None:
        """Record in :attr:`report` why each of these files (seen failing in workers) is bad."""
        for k in sorted(indices):
            if str(self.files[k]) not in self.report.bad:
                try:
                    self.decode(k)
                    reason = "failed once while loading, readable now"
                except UnreadableImage as e:
                    reason = str(e).removeprefix(f"{self.files[k]}: ")
                self.report.bad[str(self.files[k])] = reason

    def load_all(self, max_bad_fraction: float = 0.1, progress: bool = True) -> ArrayDataset:
        """Decode every image once into an :class:`ArrayDataset`, leaving out unreadable files."""
        from tqdm import tqdm

        images, labels, bad = [], [], []
        for i in tqdm(range(len(self.files)), desc=f"decoding {self.name}", disable=not progress, leave=False):
            try:
                images.append(self.decode(i))
                labels.append(int(self.labels[i]))
            except UnreadableImage as e:
                bad.append((self.files[i], e))
                self.report.bad[str(self.files[i])] = str(e).removeprefix(f"{self.files[i]}: ")
        if bad:
            shown = "; ".join(str(e) for _, e in bad[:3])
            warnings.warn(f"{self.root}: skipped {len(bad)} of {len(self.files)} unreadable images ({shown})",
                          stacklevel=2)
        if len(bad) > max_bad_fraction * len(self.files) or not images:
            raise SelfSupError(
                f"{self.root}: {len(bad)} of {len(self.files)} images could not be read (more than "
                f"{max_bad_fraction:.0%}); check the files, e.g. {bad[0][1]}"
            )
        return ArrayDataset(torch.stack(images), torch.tensor(labels, dtype=torch.long), self.classes,
                            self.name, skipped=len(bad), report=self.report)


def _scan_images(folder: Path, recursive: bool = True) -> tuple[list[Path], int]:
    """Image files under ``folder`` (sorted) and the number of other files left out."""
    out, ignored = [], 0
    # os.walk with followlinks=False cannot loop on symlink cycles.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        images = [f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
        ignored += sum(1 for f in filenames if not f.startswith(".")) - len(images)
        out += [Path(dirpath) / f for f in images]
        if not recursive:
            break
    return out, ignored


def open_dataset(path: str | os.PathLike, split: str = "train", image_size: int | None = None,
                 in_memory: bool = True, max_pixels: int = 89_478_485) -> ArrayDataset | ImageFolder:
    """Open ``path`` (or ``"digits"``) as a data set; see the module docstring for the layouts.

    ``split`` is ``"train"`` or ``"test"``. ``image_size`` resizes every image to a square of
    that side (required for image folders; optional elsewhere). ``in_memory`` decodes image
    folders once into one uint8 tensor; set it False for folders larger than memory.
    ``max_pixels`` refuses larger images in image folders (decompression bombs).
    """
    if split not in ("train", "test"):
        raise SelfSupError(f"unknown split {split!r}; use 'train' or 'test'")
    if str(path) in ("", "digits"):
        return load_digits(split, image_size or 32)
    p = Path(path).expanduser()
    if not p.exists():
        raise SelfSupError(f"data path {str(path)!r} does not exist; set data.path to a folder (or 'digits')")
    if not p.is_dir():
        raise SelfSupError(f"data path {str(path)!r} is a file; point data.path at the folder that holds it")
    if (p / "train_x.npy").exists() or (p / "test_x.npy").exists():
        ds: ArrayDataset | ImageFolder = load_numpy_folder(p, split)
    elif (c := _find_cifar_dir(p)) is not None:
        ds = load_cifar_pickle(c, split)
    elif _find_idx(p, "train", "images") or _find_idx(p, "t10k", "images"):
        ds = load_idx_folder(p, split)
    else:
        root = p / split if (p / "train").is_dir() else p
        if split == "test" and root == p:
            raise SelfSupError(f"{p}: no test/ sub-folder, so there is no test split")
        if not root.is_dir():
            raise SelfSupError(f"{p}: no {split}/ sub-folder")
        folder = ImageFolder(root, image_size or 32, max_pixels)
        return folder.load_all() if in_memory else folder
    if len(ds) == 0:
        raise SelfSupError(f"data set at {p} ({split}) is empty")
    if image_size is not None:
        ds = ArrayDataset(_resize_uint8(ds.images, image_size), ds.labels, ds.classes, ds.name)
    return ds
