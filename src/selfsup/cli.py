"""The ``selfsup`` command line: pretrain, eval, compare, report, embed, export, preview, methods."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from selfsup.errors import EXIT_PREEMPTED, Preempted, SelfSupError

EPILOG_PRETRAIN = """examples:
  selfsup pretrain simclr data.path=../shared/data/cifar10 train.epochs=100
  selfsup pretrain configs/simclr.yaml model.width=0.25 run.name=narrow
  selfsup pretrain --resume runs/simclr-0001
overrides are section.key=value (value parsed as YAML); sections: method, data, model, views,
train, eval, run. Unknown keys are errors that list the valid ones.

exit status: 0 done; 2 bad input (message on stderr); 75 stopped by SIGTERM/SIGINT after saving a
checkpoint (continue with --resume); 130 stopped at once by a second signal, without a checkpoint."""


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import os

    from selfsup.config import load_config
    from selfsup.train.launch import spawn_local
    from selfsup.train.pretrain import pretrain

    if args.devices > 1 and "WORLD_SIZE" not in os.environ:
        # Start the ranks on this machine, as torchrun would; each runs this same command.
        argv = ["pretrain", *([args.config] if args.config else []), *args.overrides]
        argv += [f"--resume={args.resume}"] if args.resume else []
        argv += ["--force"] if args.force else []
        argv += ["--quiet"] if args.quiet else []
        return spawn_local(args.devices, argv)
    if args.resume:
        if args.config or args.overrides:
            raise SelfSupError("--resume continues a run with its saved config; drop the config and overrides")
        result = pretrain(None, resume_dir=args.resume, progress=not args.quiet)
    else:
        cfg = load_config(args.config, args.overrides)
        result = pretrain(cfg, force=args.force, progress=not args.quiet)
    if result.rank == 0:
        print(f"run folder: {result.run_dir}")
    return 0


def _eval_split_data(cfg, data: str | None):
    from selfsup.config import from_dict
    from selfsup.train.pretrain import load_test_data, load_train_data

    if data is not None:
        d = cfg.to_dict()
        d["data"]["path"] = data
        d["data"]["subset"] = None
        cfg = from_dict(d)
    train_set, test_set = load_train_data(cfg), load_test_data(cfg)
    if test_set is None or not getattr(train_set, "has_labels", False):
        raise SelfSupError(f"evaluation needs labelled train and test splits; {cfg.data.path} has none "
                           "(pass --data with a labelled data set)")
    return train_set, test_set


# The keys of a run's saved config each command reads (None: the whole section); the method, the
# model and the views belong to the trained encoder and stay as the run saved them.
EVAL_KEYS: dict[str, tuple[str, ...] | None] = {"eval": None, "data": None, "train": ("device", "seed")}
EMBED_KEYS: dict[str, tuple[str, ...] | None] = {"eval": ("batch_size",), "data": ("path", "image_size"),
                                                 "train": ("device",)}
FLAG_KEYS = {"k": ("eval", "knn_k"), "temperature": ("eval", "knn_temperature"), "device": ("train", "device"),
             "data": ("data", "path")}


def _refuse_flag_and_override(args: argparse.Namespace) -> None:
    """A flag and the override of its config key are one setting; refuse both given at once."""
    from selfsup.config import parse_overrides

    given = parse_overrides(args.overrides)
    for flag, (sec, key) in FLAG_KEYS.items():
        if getattr(args, flag, None) is not None and isinstance(given.get(sec), dict) and key in given[sec]:
            raise SelfSupError(f"--{flag} and {sec}.{key} set the same thing; give one of them")


def _load_run_with_overrides(args: argparse.Namespace, allowed: dict[str, tuple[str, ...] | None]):
    """``load_run(args.run)`` with the command's ``section.key=value`` overrides on its config."""
    from selfsup.config import apply_overrides
    from selfsup.train.pretrain import load_run

    _refuse_flag_and_override(args)
    cfg, method, state = load_run(args.run)
    return apply_overrides(cfg, args.overrides, args.command, allowed), method, state


STANDARD_PROTOCOLS = ("knn", "linear", "linear-aug", "finetune", "cluster")
PROTOCOLS = (*STANDARD_PROTOCOLS, "transfer", "all")

EPILOG_EVAL = """protocols (each writes eval_<protocol>.json into the run folder):
  knn         weighted kNN on frozen features (k=200, T=0.07)
  linear      fast linear probe: logistic regression on cached frozen features
  linear-aug  linear evaluation as the papers run it: frozen backbone, augmented images, SGD + cosine
  finetune    whole network fine-tuned on 1% and 10% of the labels (class-balanced, saved in subsets/)
  cluster     k-means with K = number of classes on frozen test features: NMI (DeepCluster's
              I(A;B)/sqrt(H(A)H(B))), ARI, Hungarian accuracy
  transfer    kNN and linear probe on another labelled data set (--data; channels and size converted)
  all         knn, linear, linear-aug, finetune and cluster
examples:
  selfsup eval all runs/simclr-0001
  selfsup eval finetune runs/simclr-0001 --fractions 0.01 --epochs 40
  selfsup eval transfer runs/simclr-0001 --data ../shared/data/fashion-mnist
  selfsup eval knn runs/simclr-0001 eval.knn_temperature=0.1 eval.knn_k=50
overrides are section.key=value on the run's saved config, for the keys eval reads: eval.*, data.*,
train.device, train.seed (report takes the same; embed eval.batch_size, data.path, data.image_size,
train.device). A flag and the override of its key (--k and eval.knn_k, --temperature and
eval.knn_temperature, --device and train.device, --data and data.path) are one setting: give one."""


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "data"


class _FeatureCache:
    """Frozen features of each encoder on the train and test splits, extracted once per command."""

    def __init__(self, cfg, train_set, test_set, device):
        self.cfg, self.train_set, self.test_set, self.device = cfg, train_set, test_set, device
        self.cache: dict[str, tuple] = {}

    def get(self, name: str, encoder):
        from selfsup.eval.features import extract_features

        if name not in self.cache:
            v = self.cfg.views
            a = (v.mean, v.std, v.size, self.cfg.eval.batch_size, self.device)
            self.cache[name] = (*extract_features(encoder, self.train_set, *a),
                                *extract_features(encoder, self.test_set, *a))
        return self.cache[name]


def _evaluate(protocol: str, name: str, encoder, cfg, args: argparse.Namespace, train_set, test_set,
              features: _FeatureCache, device) -> dict:
    """One protocol on one encoder; prints a line per result and returns the JSON entry."""
    v = cfg.views
    seed = cfg.train.seed
    if protocol in ("knn", "linear", "transfer"):
        from selfsup.eval.knn import knn_eval
        from selfsup.eval.linear import linear_probe

        f_tr, y_tr, f_te, y_te = features.get(name, encoder)
        out = {}
        if protocol in ("knn", "transfer"):
            k = args.k or cfg.eval.knn_k
            if k > len(f_tr):
                raise SelfSupError(f"--k {k} is larger than the training set ({len(f_tr)} images)")
            out["knn"] = knn_eval(f_tr, y_tr, f_te, y_te, k, args.temperature or cfg.eval.knn_temperature)
        if protocol in ("linear", "transfer"):
            out["linear"] = linear_probe(f_tr, y_tr, f_te, y_te, seed=seed)
        for kind, r in out.items():
            print(f"{protocol}{'/' + kind if protocol == 'transfer' else ''} {name:>11}: "
                  f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%")
        return out if protocol == "transfer" else out[protocol]
    if protocol == "linear-aug":
        from selfsup.eval.linear_aug import linear_eval_augmented

        r = linear_eval_augmented(encoder, train_set, test_set, v.mean, v.std, v.size, epochs=args.epochs or 100,
                                  batch_size=args.batch_size or 256, lr=args.lr or 0.3, seed=seed, device=device,
                                  eval_batch_size=cfg.eval.batch_size)
        print(f"linear-aug {name:>11}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  ({r['steps']} steps)")
        return r
    if protocol == "finetune":
        from selfsup.eval.finetune import SWAV_LRS, finetune, fraction_name, load_or_make_subset, subset_file

        subset_seed = seed if args.subset_seed is None else args.subset_seed
        out = {}
        for frac in args.fractions:
            path = subset_file(args.run, train_set.name, frac, subset_seed)
            index = load_or_make_subset(path, train_set.labels, frac, subset_seed)
            trunk_lr, head_lr = SWAV_LRS.get(frac, SWAV_LRS[0.1])
            r = finetune(encoder, train_set, test_set, index, v.mean, v.std, v.size,
                         trunk_lr=args.trunk_lr or trunk_lr, head_lr=args.head_lr or head_lr,
                         epochs=args.epochs or 20, batch_size=args.batch_size or 256, seed=seed, device=device,
                         eval_batch_size=cfg.eval.batch_size)
            r["subset_file"] = str(path.relative_to(args.run))
            r["subset_seed"] = subset_seed
            out[fraction_name(frac)] = r
            print(f"finetune {fraction_name(frac):>5} {name:>11}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  "
                  f"({r['labelled_images']} labelled images, subset {r['subset_file']})")
        return out
    if protocol == "cluster":
        from selfsup.eval.clustering import cluster_eval

        f_te, y_te = features.get(name, encoder)[2:]
        r = cluster_eval(f_te, y_te, k=args.clusters, seed=seed)
        print(f"cluster {name:>11}: NMI {r['nmi']:.4f}  ARI {r['ari']:.4f}  accuracy {100 * r['accuracy']:.2f}%  "
              f"(k={r['k']}; NMI = {r['nmi_definition']})")
        return r
    raise SelfSupError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")


def _cmd_eval(args: argparse.Namespace) -> int:
    from selfsup.train.checkpoint import seed_everything
    from selfsup.train.pretrain import build_method, pick_device

    if args.protocol == "transfer" and not args.data:
        raise SelfSupError("eval transfer needs --data: the labelled data set to transfer to")
    cfg, method, state = _load_run_with_overrides(args, EVAL_KEYS)
    device = pick_device(args.device or cfg.train.device)
    train_set, test_set = _eval_split_data(cfg, args.data)
    encoders = {"trained": method.backbone.to(device)}
    if args.baseline:
        seed_everything(cfg.train.seed)
        encoders["random_init"] = build_method(cfg, state.get("dataset_size", 0)).backbone.to(device)
    features = _FeatureCache(cfg, train_set, test_set, device)
    data_name = args.data or cfg.data.path
    for protocol in STANDARD_PROTOCOLS if args.protocol == "all" else (args.protocol,):
        results = {name: _evaluate(protocol, name, enc, cfg, args, train_set, test_set, features, device)
                   for name, enc in encoders.items()}
        out = {"protocol": protocol, "data": data_name, "epoch": state["epoch"], "step": state["step"], **results}
        stem = protocol.replace("-", "_")
        if protocol == "transfer":
            stem += "_" + _slug(Path(data_name).name)
        path = Path(args.run) / f"eval_{stem}.json"
        path.write_text(json.dumps(out, indent=2))
        print(f"saved {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from selfsup.eval.summary import standard_metrics
    from selfsup.viz.compare import comparison_chart, comparison_table

    rows = {}
    for run in args.runs:
        p = Path(run)
        if not (p / "config.yaml").exists():
            raise SelfSupError(f"{run} is not a run folder (no config.yaml)")
        name = p.name if p.name not in rows else str(p)
        rows[name] = standard_metrics(p)
    print(comparison_table(rows))
    out = comparison_chart(rows, args.out)
    if out is None:
        print("no eval_*.json in these runs yet: run `selfsup eval all RUN` first")
    else:
        print(f"wrote {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from selfsup.data.datasets import ArrayDataset
    from selfsup.eval.report import collect_report
    from selfsup.train import checkpoint as ckpt
    from selfsup.train.pretrain import build_method, build_views, load_test_data, load_train_data, pick_device
    from selfsup.viz.report import write_report

    cfg, method, state = _load_run_with_overrides(args, EVAL_KEYS)
    device = pick_device(args.device or cfg.train.device)
    train_set = load_train_data(cfg)
    if not isinstance(train_set, ArrayDataset):
        train_set = train_set.load_all()
    test_set = load_test_data(cfg)
    checkpoints = [(int(p.stem.split("-")[1]), lambda p=p: ckpt.load(p)) for p in ckpt.list_checkpoints(args.run)]
    ckpt.seed_everything(cfg.train.seed)
    random_init = build_method(cfg, state.get("dataset_size", 0)).backbone
    method = method.to(device)
    data = collect_report(args.run, Path(args.run).name, method, train_set, test_set, cfg.views.mean, cfg.views.std,
                          cfg.views.size, epoch=state["epoch"], checkpoints=checkpoints, random_init=random_init,
                          recipe=build_views(cfg), config=cfg.to_dict(), max_points=args.max_points,
                          seed=cfg.train.seed, batch_size=cfg.eval.batch_size, device=device)
    out = write_report(args.run, data)
    print(f"wrote {out} (plots in {Path(args.run) / 'plots'})")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    import torch

    from selfsup.data.datasets import ArrayDataset, open_dataset
    from selfsup.eval.embed import save_embeddings
    from selfsup.eval.features import extract_features
    from selfsup.train.pretrain import pick_device

    cfg, method, _ = _load_run_with_overrides(args, EMBED_KEYS)
    device = pick_device(args.device or cfg.train.device)
    ds = open_dataset(args.data or cfg.data.path, args.split, cfg.data.image_size or cfg.views.size)
    if not isinstance(ds, ArrayDataset):
        ds = ds.load_all()
    feats, labels = extract_features(method.backbone.to(device), ds, cfg.views.mean, cfg.views.std, cfg.views.size,
                                     cfg.eval.batch_size, device)
    files = save_embeddings(args.out, feats, labels, torch.arange(len(ds)))
    print(f"{len(ds)} embeddings of dimension {feats.shape[1]} ({ds.name}): wrote {', '.join(map(str, files))}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from selfsup.models.export import export_backbone
    from selfsup.train.pretrain import load_run

    cfg, method, state = load_run(args.run)
    out = export_backbone(method.backbone, args.out, {"mean": cfg.views.mean, "std": cfg.views.std,
                                                      "image_size": cfg.views.size, "method": cfg.method["name"],
                                                      "epoch": state["epoch"]})
    print(f"wrote {out} ({cfg.model.backbone}, {cfg.model.stem} stem, width {cfg.model.width}); "
          "load it with selfsup.models.load_exported")
    return 0


def _fractions(text: str) -> list[float]:
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0.01,0.1, got {text!r}") from None
    if not out or any(not 0 < f <= 1 for f in out):
        raise argparse.ArgumentTypeError(f"fractions must lie in (0, 1], got {text!r}")
    return out


def _cmd_preview(args: argparse.Namespace) -> int:
    import torch

    from selfsup.config import load_config
    from selfsup.train.pretrain import build_views, load_train_data, resolve_normalization, resolve_view_size
    from selfsup.viz.preview import preview_grid

    _refuse_flag_and_override(args)
    overrides = list(args.overrides) + ([f"data.path={args.data}"] if args.data else [])
    cfg = load_config(args.config, overrides)
    ds = load_train_data(cfg)
    resolve_normalization(cfg, ds)
    note = resolve_view_size(cfg, ds)
    if note:
        print(note)
    recipe = build_views(cfg)
    n = min(args.n, len(ds))
    idx = torch.linspace(0, len(ds) - 1, n).long()
    images = torch.stack([ds[int(i)][0] for i in idx])
    out = preview_grid(images, recipe, args.out, seed=args.seed, index=idx)
    print(f"wrote {out}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from selfsup.config import RECIPE_DIR, load_yaml
    from selfsup.methods import METHODS

    for name, cls in METHODS.items():
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip()
        title = " ".join(doc.split("\n\n")[0].split())
        recipe = RECIPE_DIR / f"{name}.yaml"
        print(f"{name}\n  paper:  {title}")
        if recipe.exists():
            d = load_yaml(recipe)
            t = d.get("train", {})
            m = {k: v for k, v in d.get("method", {}).items() if k != "name"}
            print(f"  recipe: configs/{recipe.name}: {', '.join(f'{k}={v}' for k, v in m.items())}; "
                  f"views={d.get('views', {}).get('recipe', 'simclr')}; optimizer={t.get('optimizer')} "
                  f"lr={t.get('lr')} batch={t.get('batch_size')} epochs={t.get('epochs')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfsup", description="Self-supervised visual representation learning.")
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser("pretrain", help="train an encoder without labels", epilog=EPILOG_PRETRAIN,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pt.add_argument("config", nargs="?", help="a YAML recipe or the name of a packaged one (see `selfsup methods`)")
    pt.add_argument("overrides", nargs="*", help="section.key=value overrides")
    pt.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its newest checkpoint")
    pt.add_argument("--force", action="store_true", help="overwrite an existing run folder named by run.name")
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.add_argument("--devices", type=int, default=1,
                    help="processes on this machine (one per GPU, or CPU processes with gloo); "
                         "for several machines use torchrun --nproc-per-node N -m selfsup pretrain ...")
    pt.set_defaults(func=_cmd_pretrain)

    ev = sub.add_parser("eval", help="evaluate a run's encoder: knn, linear, linear-aug, finetune, cluster, ...",
                        epilog=EPILOG_EVAL, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("protocol", choices=PROTOCOLS)
    ev.add_argument("run", help="a run folder")
    ev.add_argument("overrides", nargs="*", help="section.key=value overrides of the run's config (see below)")
    ev.add_argument("--data", help="evaluate on another labelled data set (default: the run's; required by transfer)")
    ev.add_argument("--k", type=int, help="kNN neighbours (default: eval.knn_k, 200)")
    ev.add_argument("--temperature", type=float, help="kNN temperature (default: eval.knn_temperature, 0.07)")
    ev.add_argument("--baseline", action="store_true", help="also evaluate the same backbone at random init")
    ev.add_argument("--device", help="cpu, cuda, ... (default: the run's)")
    ev.add_argument("--epochs", type=int, help="linear-aug / finetune epochs (default: 100 / 20)")
    ev.add_argument("--batch-size", type=int, help="linear-aug / finetune batch size (default: 256)")
    ev.add_argument("--lr", type=float, help="linear-aug lr at batch 256 (default: 0.3)")
    ev.add_argument("--fractions", type=_fractions, default=[0.01, 0.1],
                    help="finetune label fractions, comma-separated (default: 0.01,0.1)")
    ev.add_argument("--subset-seed", type=int, help="seed of the labelled subsets (default: the run's train.seed)")
    ev.add_argument("--trunk-lr", type=float, help="finetune trunk lr (default: SwAV's, 0.02 for 1%%, 0.01 for 10%%)")
    ev.add_argument("--head-lr", type=float, help="finetune head lr (default: SwAV's, 5 for 1%%, 0.2 for 10%%)")
    ev.add_argument("--clusters", type=int, help="cluster: k-means K (default: the number of classes)")
    ev.set_defaults(func=_cmd_eval)

    co = sub.add_parser("compare", help="one table and one bar chart of the standard metrics of several runs")
    co.add_argument("runs", nargs="+", help="run folders (their eval_*.json are read)")
    co.add_argument("--out", default="compare.png", help="bar chart PNG (default: compare.png)")
    co.set_defaults(func=_cmd_compare)

    rp = sub.add_parser("report", help="PNG plots and one self-contained HTML page for a run")
    rp.add_argument("run", help="a run folder; writes RUN/report.html and RUN/plots/*.png")
    rp.add_argument("overrides", nargs="*", help="section.key=value overrides of the run's config: eval.*, data.*, "
                    "train.device, train.seed")
    rp.add_argument("--max-points", type=int, default=2000, help="test images in the t-SNE map and collapse measures")
    rp.add_argument("--device", help="cpu, cuda, ... (default: the run's)")
    rp.set_defaults(func=_cmd_report)

    em = sub.add_parser("embed", help="write a data set's embeddings (features, index, labels)")
    em.add_argument("run", help="a run folder")
    em.add_argument("overrides", nargs="*", help="section.key=value overrides of the run's config: "
                    "eval.batch_size, data.path, data.image_size, train.device")
    em.add_argument("--data", help="data set (default: the run's)")
    em.add_argument("--split", choices=["train", "test"], default="train")
    em.add_argument("--out", required=True, help="FILE.npy (+ FILE.meta.npz), FILE.npz, or FILE.parquet (pyarrow)")
    em.add_argument("--device", help="cpu, cuda, ... (default: the run's)")
    em.set_defaults(func=_cmd_embed)

    ex = sub.add_parser("export", help="write the backbone as safetensors with its metadata")
    ex.add_argument("run", help="a run folder")
    ex.add_argument("--out", required=True, help="output file, e.g. encoder.safetensors")
    ex.set_defaults(func=_cmd_export)

    pv = sub.add_parser("preview", help="write a PNG grid of images and their augmented views")
    pv.add_argument("config", nargs="?", default="simclr", help="a YAML recipe or packaged recipe name")
    pv.add_argument("overrides", nargs="*", help="section.key=value overrides")
    pv.add_argument("--data", help="data path (default: the config's)")
    pv.add_argument("--out", default="views.png")
    pv.add_argument("--n", type=int, default=8, help="number of images")
    pv.add_argument("--seed", type=int, default=0)
    pv.set_defaults(func=_cmd_preview)

    me = sub.add_parser("methods", help="list every method, its paper and its default recipe")
    me.set_defaults(func=_cmd_methods)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options too (`pretrain simclr --force train.epochs=3`): argparse
    # leaves those positionals over, and they join the command's overrides.
    args, extra = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    late = [e for e in extra if takes_overrides and "=" in e and not e.startswith("-")]
    if len(late) != len(extra):
        parser.error(f"unrecognized arguments: {' '.join(e for e in extra if e not in late)}")
    if late:
        args.overrides = [*args.overrides, *late]
    try:
        return args.func(args)
    except SelfSupError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        print(f"selfsup: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`selfsup methods | head`): stop quietly. Point stdout at devnull so that
        # the interpreter's flush at exit does not raise the same error again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
