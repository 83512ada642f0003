import json
import subprocess
import sys

import pytest

from selfsup.cli import main

TINY = ["data.subset=128", "data.image_size=16", "views.size=16", "model.width=0.125", "train.batch_size=64",
        "method.hidden_dim=32", "method.projection_dim=16", "train.epochs=1", "eval.knn_k=10"]


def test_pretrain_eval_preview_methods(tmp_path, capsys):
    assert main(["pretrain", "simclr", *TINY, f"run.dir={tmp_path}", "run.name=r", "--quiet"]) == 0
    run = tmp_path / "r"
    assert (run / "config.yaml").exists() and (run / "metrics.jsonl").exists()
    assert list((run / "checkpoints").glob("epoch-*.pt"))
    assert main(["eval", "knn", str(run), "--baseline"]) == 0
    out = json.loads((run / "eval_knn.json").read_text())
    assert set(out) >= {"trained", "random_init"} and 0 <= out["trained"]["top1"] <= 100
    assert main(["eval", "linear", str(run)]) == 0
    assert "weight_decay" in json.loads((run / "eval_linear.json").read_text())["trained"]
    assert main(["preview", "simclr", "--out", str(tmp_path / "v.png"), "--n", "3"]) == 0
    assert (tmp_path / "v.png").stat().st_size > 1000
    assert main(["methods"]) == 0
    assert "arXiv 2002.05709" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["pretrain", "simclr", "train.epoch=3"], "unknown key train.epoch"),
    (["pretrain", "simclr", "data.path=/no/such/dir"], "does not exist"),
    (["pretrain", "simclr", "train.lr=-1"], "train.lr must be positive"),
    (["pretrain", "simclr", "method.name=nope"], "unknown method 'nope'"),
    (["eval", "knn", "/no/such/run"], "not a run folder"),
])
def test_bad_input_is_one_clear_line_without_traceback(argv, message, tmp_path):
    r = subprocess.run([sys.executable, "-m", "selfsup", *argv, f"run.dir={tmp_path}"] if argv[0] == "pretrain"
                       else [sys.executable, "-m", "selfsup", *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_help_for_each_command():
    for cmd in ["pretrain", "eval", "preview", "methods"]:
        r = subprocess.run([sys.executable, "-m", "selfsup", cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: selfsup" in r.stdout


def test_a_closed_pipe_ends_quietly():
    # `selfsup methods | head`: the reader is gone before the listing is written.
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "selfsup", "methods"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_ctrl_c_outside_pretrain_is_one_line(monkeypatch, capsys):
    import selfsup.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_methods", interrupted)
    assert cli.main(["methods"]) == 130
    assert capsys.readouterr().err.strip() == "selfsup: interrupted"
