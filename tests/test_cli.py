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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", "simclr", *TINY, f"run.dir={root}", "run.name=r", "--quiet"]) == 0
    return root / "r"


def test_eval_takes_overrides_of_the_runs_config(tiny_run):
    assert main(["eval", "knn", str(tiny_run), "eval.knn_temperature=0.1", "eval.knn_k=5"]) == 0
    knn = json.loads((tiny_run / "eval_knn.json").read_text())["trained"]
    assert knn["temperature"] == 0.1 and knn["k"] == 5
    assert main(["eval", "knn", str(tiny_run), "--k", "7", "eval.knn_temperature=0.2"]) == 0  # flag and override
    knn = json.loads((tiny_run / "eval_knn.json").read_text())["trained"]
    assert knn["temperature"] == 0.2 and knn["k"] == 7
    saved = (tiny_run / "config.yaml").read_text()
    assert "knn_temperature: 0.07" in saved  # the run's own config is left as it was


@pytest.mark.parametrize("argv,message", [
    (["eval", "knn", "RUN", "model.width=0.5"],
     "eval does not use model.width; its overrides are eval.*, data.*, train.device, train.seed"),
    (["eval", "cluster", "RUN", "train.epochs=3"], "eval does not use train.epochs"),
    (["eval", "knn", "RUN", "--k", "5", "eval.knn_k=6"], "--k and eval.knn_k set the same thing"),
    (["embed", "RUN", "--out", "f.npy", "data.subset=3"], "embed does not use data.subset"),
    (["report", "RUN", "views.size=8"], "report does not use views.size"),
    (["preview", "simclr", "--data", "digits", "data.path=digits"], "--data and data.path set the same thing"),
])
def test_overrides_a_command_does_not_read_are_refused(argv, message, tiny_run, capsys):
    assert main([str(tiny_run) if a == "RUN" else a for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_unknown_eval_key_is_one_clear_line_without_traceback(tiny_run):
    r = subprocess.run([sys.executable, "-m", "selfsup", "eval", "knn", str(tiny_run), "eval.knn_temp=0.1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("selfsup: error: unknown key eval.knn_temp; valid keys of eval: knn_k, "
                                "knn_temperature, batch_size")


def test_embed_report_and_preview_take_overrides(tiny_run, tmp_path):
    import numpy as np

    out = tmp_path / "f.npy"
    assert main(["embed", str(tiny_run), "--out", str(out), "--split", "test", "eval.batch_size=7",
                 "data.image_size=16"]) == 0
    assert np.load(out).shape[0] == 359  # the digits' test split
    assert main(["report", str(tiny_run), "--max-points", "40", "eval.batch_size=32", "train.seed=1"]) == 0
    assert (tiny_run / "report.html").exists()
    assert main(["preview", "simclr", "views.size=24", "--out", str(tmp_path / "v.png"), "--n", "2"]) == 0
    assert (tmp_path / "v.png").stat().st_size > 500
