import pytest

from selfsup.config import load_config, method_kwargs, parse_overrides
from selfsup.errors import SelfSupError
from selfsup.methods import SimCLR


def test_packaged_recipe_and_overrides():
    cfg = load_config("simclr", ["train.epochs=7", "method.temperature=0.2", "views.options={strength: 1.0}",
                                 "train.grad_clip=null"])
    assert cfg.train.epochs == 7 and cfg.method["temperature"] == 0.2 and cfg.views.options == {"strength": 1.0}
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and cfg.train.grad_clip is None


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(SelfSupError, match=r"unknown key train\.epoch; valid keys of train: epochs, batch_size"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(SelfSupError, match="valid sections: method, data"):
        load_config(None, ["trainer.epochs=3"])
    with pytest.raises(SelfSupError, match="valid keys: projection_dim, hidden_dim, temperature"):
        method_kwargs(SimCLR, {"name": "simclr", "temp": 0.1})


@pytest.mark.parametrize("override,message", [
    ("train.lr=-0.1", "train.lr must be positive"),
    ("train.epochs=0", "train.epochs must be positive"),
    ("train.optimizer=adam", "choose one of: sgd, lars, adamw"),
    ("train.epochs=ten", "train.epochs: expected int"),
    ("model.backbone=vgg", "choose one of: resnet18"),
    ("eval.knn_k=0", "eval.knn_k must be positive"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(SelfSupError, match=message):
        load_config(None, [override])


def test_override_syntax_errors_and_missing_recipe():
    with pytest.raises(SelfSupError, match="section.key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(SelfSupError, match="not found"):
        load_config("no_such_recipe")


def test_apply_overrides_takes_only_the_keys_a_command_reads():
    from selfsup.config import apply_overrides

    cfg = load_config("simclr")
    allowed = {"eval": None, "train": ("device",)}
    out = apply_overrides(cfg, ["eval.knn_k=5", "train.device=cpu"], "eval", allowed)
    assert out.eval.knn_k == 5 and out.train.device == "cpu" and cfg.eval.knn_k == 200
    with pytest.raises(SelfSupError, match=r"eval does not use train.lr, method.temperature; its overrides are "
                                           r"eval.\*, train.device"):
        apply_overrides(cfg, ["train.lr=0.1", "method.temperature=0.2"], "eval", allowed)
    with pytest.raises(SelfSupError, match="unknown key eval.k;"):
        apply_overrides(cfg, ["eval.k=5"], "eval", allowed)
