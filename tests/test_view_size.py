"""views.size follows the data unless set: recipes are written for views.base_size (32 px)."""

import numpy as np
import pytest
import yaml

from selfsup.cli import main
from selfsup.config import load_config, resolve_recipe_path
from selfsup.data.views import scale_view_sizes
from selfsup.errors import SelfSupError
from selfsup.train.pretrain import load_train_data, pretrain, resolve_view_size

TINY = ["model.width=0.125", "train.batch_size=16", "train.max_steps=1", "train.epochs=1", "train.warmup_epochs=0",
        "train.log_every=1", "views.mean=[0.5,0.5,0.5]", "views.std=[0.25,0.25,0.25]"]


def _npy_data(root, side: int, n: int = 32):
    """``n`` grey ``side`` x ``side`` uint8 images in the NumPy layout, training split only."""
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(side)
    np.save(root / "train_x.npy", rng.integers(0, 256, (n, side, side), dtype=np.uint8))
    np.save(root / "train_y.npy", np.arange(n) % 4)
    return root


def _pretrain(recipe, tmp_path, side, *overrides):
    cfg = load_config(recipe, [f"data.path={_npy_data(tmp_path / f'data{side}', side)}", *TINY,
                               f"run.dir={tmp_path}", "run.name=r", *overrides])
    run = pretrain(cfg, force=True, progress=False).run_dir
    return yaml.safe_load((run / "config.yaml").read_text())["views"]


def test_local_crops_keep_their_proportion_rounded_half_up():
    assert scale_view_sizes("multicrop", {"local_size": 16, "num_local": 4}, 32, 28) == (28, {"local_size": 14,
                                                                                              "num_local": 4})
    assert scale_view_sizes("multicrop", {}, 32, 96)[1] == {"local_size": 48}  # the recipe's default, 16
    assert scale_view_sizes("multicrop", {"local_size": 16}, 32, 20)[1]["local_size"] == 10
    assert scale_view_sizes("multicrop", {"local_size": 3}, 32, 4)[1]["local_size"] == 1  # 0.375 -> at least 1
    assert scale_view_sizes("multicrop", {"local_size": 5}, 32, 16)[1]["local_size"] == 3  # 2.5 -> 3
    assert scale_view_sizes("simclr", {"strength": 0.5}, 32, 28) == (28, {"strength": 0.5})


def test_simclr_on_28px_data_trains_on_28px_views_and_says_so_once(tmp_path, capsys):
    views = _pretrain("simclr", tmp_path, 28)
    assert views["size"] == 28 and views["base_size"] == 32
    out = capsys.readouterr().out
    line = "views: 28 px (recipe 32 px scaled to the data's 28x28 images); set views.size to choose"
    assert out.count(line) == 1, out


def test_96px_data_gives_96px_views_and_proportional_local_crops(tmp_path, capsys):
    views = _pretrain("swav", tmp_path, 96, "method.num_prototypes=8", "method.queue_length=0",
                      "views.options.num_local=2")
    assert views["size"] == 96 and views["options"]["local_size"] == 48 and views["options"]["num_local"] == 2
    line = "views: 96 px, local crops 48 px (recipe 32 px and 16 px scaled to the data's 96x96 images)"
    assert line in capsys.readouterr().out


def test_swav_local_crops_on_28px_data(tmp_path):
    views = _pretrain("swav", tmp_path, 28, "method.num_prototypes=8", "method.queue_length=0",
                      "views.options.num_local=2")
    assert views["size"] == 28 and views["options"]["local_size"] == 14


def test_explicit_size_is_kept_exactly_and_not_announced(tmp_path, capsys):
    views = _pretrain("swav", tmp_path, 28, "views.size=24", "method.num_prototypes=8", "method.queue_length=0",
                      "views.options.num_local=2")
    assert views["size"] == 24 and views["options"]["local_size"] == 16
    assert "views:" not in capsys.readouterr().out


def test_explicit_size_from_a_user_yaml_is_kept(tmp_path):
    recipe = yaml.safe_load(resolve_recipe_path("simclr").read_text())
    recipe["views"]["size"] = 20
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump(recipe))
    cfg = load_config(str(user), [f"data.path={_npy_data(tmp_path / 'd', 28)}"])
    assert resolve_view_size(cfg, load_train_data(cfg)) is None and cfg.views.size == 20


def test_explicit_size_larger_than_the_images_is_the_clear_error(tmp_path, capsys):
    r = main(["pretrain", "simclr", f"data.path={_npy_data(tmp_path / 'd', 28)}", "views.size=32", *TINY,
              f"run.dir={tmp_path}", "--quiet"])
    assert r == 2
    assert "views of 32x32 px requested from images of 28x28 px; set views.size <= 28" in capsys.readouterr().err


def test_data_of_the_recipes_size_changes_nothing(tmp_path, capsys):
    cfg = load_config("swav", [f"data.path={_npy_data(tmp_path / 'd', 32)}"])
    assert resolve_view_size(cfg, load_train_data(cfg)) is None
    assert cfg.views.size == 32 and cfg.views.options["local_size"] == 16


def test_image_folders_scale_only_to_data_image_size(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, side in enumerate((40, 70, 90)):
        Image.fromarray(np.full((side, side + 10, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    for extra, size in (([], 32), (["data.image_size=64"], 64)):
        cfg = load_config("simclr", [f"data.path={folder}", "data.in_memory=false", *extra])
        resolve_view_size(cfg, load_train_data(cfg))
        assert cfg.views.size == size


def test_resume_keeps_the_resolved_size(tmp_path, capsys):
    views = _pretrain("simclr", tmp_path, 28, "train.max_steps=2", "train.checkpoint_every_steps=1")
    assert views["size"] == 28
    capsys.readouterr()
    result = pretrain(None, resume_dir=tmp_path / "r", progress=False)
    assert result.fit is not None and "views:" not in capsys.readouterr().out


def test_jigsaw_trains_at_28px_and_relative_position_names_the_fix(tmp_path):
    views = _pretrain("jigsaw", tmp_path, 28, "method.num_permutations=4", "method.tile_dim=16",
                      "method.hidden_dim=16")
    assert views["size"] == 28
    with pytest.raises(SelfSupError, match=r"views of at least 32 px \(views.size"):
        _pretrain("relative_position", tmp_path, 28, "method.patch_dim=16", "method.hidden_dim=16")
