"""The run report: plots, one self-contained HTML page, and that page rendered by headless Chromium."""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.eval.report import cluster_assignments, collect_report
from selfsup.train.pretrain import build_views, load_run, load_test_data, load_train_data
from selfsup.viz.report import write_report

# Two epochs of two steps with a checkpoint after each, every step logged: loss/lr curves, online
# kNN before and after, and a collapse curve over random init + two checkpoints.
TINY = ["data.subset=64", "data.image_size=16", "views.size=16", "model.width=0.125", "train.batch_size=32",
        "method.hidden_dim=32", "method.projection_dim=16", "train.epochs=2", "train.checkpoint_every=1",
        "train.keep_checkpoints=3", "train.log_every=1", "train.knn_every=1", "eval.knn_k=10"]

PNG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", "simclr", *TINY, f"run.dir={root}", "run.name=r", "--quiet"]) == 0
    run = root / "r"
    # Keys another trainer version or a clustering method may log: the report plots them when present.
    with open(run / "metrics.jsonl", "a") as fh:
        for step, epoch in ((2, 1), (4, 2)):
            fh.write(json.dumps({"epoch": epoch, "step": step, "collapse_std": 0.1 * epoch,
                                 "effective_rank": 3.0 * epoch, "nmi_labels": 0.2 * epoch}) + "\n")
    assert main(["eval", "knn", str(run)]) == 0
    assert main(["report", str(run), "--max-points", "200"]) == 0
    return run


def test_report_writes_plots_and_one_self_contained_page(run):
    plots = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert plots == ["collapse.png", "collapse_logged.png", "embedding_tsne.png", "knn.png", "loss_lr.png",
                     "nmi.png", "retrieval.png", "views.png"]
    page = (run / "report.html").read_text()
    images = PNG.findall(page)
    assert len(images) == len(plots) == page.count("<img")
    assert all(base64.b64decode(b).startswith(b"\x89PNG\r\n\x1a\n") for b in images)
    # Nothing to fetch: no scripts, stylesheets, links or remote resources.
    assert not re.search(r"<script|<link|https?://|src=\"(?!data:)", page)
    assert "I(A;B)/sqrt(H(A)H(B))" in page and "kNN top-1" in page
    # SimCLR keeps no cluster assignments: no cluster images, only the logged NMI curve.
    assert "clusters.png" not in plots and "buffer <code>" not in page


def test_collapse_curve_covers_random_init_and_every_checkpoint(run):
    cfg, method, state = load_run(run)
    train = load_train_data(cfg)
    ckpts = [(1, lambda: torch.load(run / "checkpoints/epoch-0001.pt", weights_only=True))]
    data = collect_report(run, "r", method, train, load_test_data(cfg), cfg.views.mean, cfg.views.std,
                          cfg.views.size, epoch=state["epoch"], checkpoints=ckpts, random_init=None,
                          max_points=100, queries=3, neighbours=4)
    assert [c["epoch"] for c in data.collapse] == [2, 1]
    assert all(0 < c["embedding_std"] < 1 and 1 <= c["effective_rank"] <= c["dim"] for c in data.collapse)
    assert data.embedding_2d.shape == (100, 2) and data.retrieval[2].shape[:2] == (3, 4)
    # The retrieved neighbours are the nearest training images by cosine similarity.
    q, _, nb, _ = data.retrieval
    assert nb.dtype == torch.uint8 and q.shape[1:] == nb.shape[2:]


def test_clusters_of_a_method_with_assignments(run, tmp_path):
    cfg, method, state = load_run(run)
    train = load_train_data(cfg)
    assert cluster_assignments(method, len(train)) is None
    assign = torch.arange(len(train)) % 5
    method.register_buffer("assignments", assign)
    found = cluster_assignments(method, len(train))
    assert found is not None and found[0] == "assignments"
    data = collect_report(run, "r", method, train, None, cfg.views.mean, cfg.views.std, cfg.views.size,
                          epoch=state["epoch"], recipe=build_views(cfg), max_points=50)
    assert [c[1] for c in data.clusters] == [13, 13, 13, 13, 12]
    for cid, _, imgs in data.clusters:
        members = train.images[assign == cid]
        assert all((members == img).flatten(1).all(1).any() for img in imgs)
    out = tmp_path / "copy"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    page = write_report(out, data).read_text()
    assert (out / "plots" / "clusters.png").exists() and "<code>assignments</code>" in page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


# Injected into a copy of the page: records script errors and console.error calls from the start,
# then on load writes how many images decoded into the DOM, which --dump-dom prints.
HEAD = ("<script>window.__errors=[];addEventListener('error',function(e){__errors.push(String(e.message))});"
        "var __ce=console.error;console.error=function(){__errors.push('console.error');__ce.apply(console,arguments)};"
        "</script>")
TAIL = ("<script>addEventListener('load',function(){var im=[].slice.call(document.images);var ok=im.filter("
        "function(i){return i.complete&&i.naturalWidth>0}).length;var d=document.createElement('div');"
        "d.id='selfsup-check';d.textContent='selfsup-check images '+ok+'/'+im.length+' errors '+__errors.length;"
        "document.body.appendChild(d)});</script>")


def _render(chromium: str, page: Path, profile: Path) -> tuple[str, str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    r = subprocess.run([chromium, *flags], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    found = re.search(r"selfsup-check images (\d+)/(\d+) errors (\d+)", r.stdout)
    assert found, f"the page did not finish loading: {r.stdout[-500:]} {r.stderr[-1000:]}"
    return found.group(0), r.stderr


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (make install-test installs it)")
def test_report_renders_in_headless_chromium(run, tmp_path):
    chromium = _chromium()
    html = (run / "report.html").read_text()
    n = html.count("<img")
    checked = tmp_path / "report.html"
    checked.write_text(html.replace("<head>", "<head>" + HEAD, 1).replace("</body>", TAIL + "</body>", 1))
    marker, stderr = _render(chromium, checked, tmp_path / "profile")
    assert marker == f"selfsup-check images {n}/{n} errors 0"
    assert "Uncaught" not in stderr and "ERROR:CONSOLE" not in stderr
    # The check itself sees a broken image and a script error.
    broken = tmp_path / "broken.html"
    bad = '<img src="data:image/png;base64,AAAA"><script>noSuchFunction()</script>'
    broken.write_text(checked.read_text().replace("</body>", bad + "</body>", 1))
    marker, stderr = _render(chromium, broken, tmp_path / "profile2")
    assert marker == f"selfsup-check images {n}/{n + 1} errors 1" and "Uncaught" in stderr
