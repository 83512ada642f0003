"""The ``selfsup`` command line: pretrain, eval, preview, methods."""

from __future__ import annotations

import argparse
import json
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
    from selfsup.config import load_config
    from selfsup.train.pretrain import pretrain

    if args.resume:
        if args.config or args.overrides:
            raise SelfSupError("--resume continues a run with its saved config; drop the config and overrides")
        result = pretrain(None, resume_dir=args.resume, progress=not args.quiet)
    else:
        cfg = load_config(args.config, args.overrides)
        result = pretrain(cfg, force=args.force, progress=not args.quiet)
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


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from selfsup.eval.features import extract_features
    from selfsup.eval.knn import knn_eval
    from selfsup.eval.linear import linear_probe
    from selfsup.train.checkpoint import seed_everything
    from selfsup.train.pretrain import build_method, load_run, pick_device

    cfg, method, state = load_run(args.run)
    device = pick_device(args.device or cfg.train.device)
    train_set, test_set = _eval_split_data(cfg, args.data)
    encoders = {"trained": method.backbone}
    if args.baseline:
        seed_everything(cfg.train.seed)
        encoders["random_init"] = build_method(cfg, state.get("dataset_size", 0)).backbone
    results = {}
    for name, enc in encoders.items():
        enc = enc.to(device)
        args_f = (cfg.views.mean, cfg.views.std, cfg.views.size, cfg.eval.batch_size, device)
        f_tr, y_tr = extract_features(enc, train_set, *args_f)
        f_te, y_te = extract_features(enc, test_set, *args_f)
        if args.protocol == "knn":
            k = args.k or cfg.eval.knn_k
            if k > len(f_tr):
                raise SelfSupError(f"--k {k} is larger than the training set ({len(f_tr)} images)")
            r = knn_eval(f_tr, y_tr, f_te, y_te, k, args.temperature or cfg.eval.knn_temperature)
        else:
            r = linear_probe(f_tr, y_tr, f_te, y_te, seed=cfg.train.seed)
        results[name] = r
        print(f"{args.protocol} {name:>11}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%")
    out = {"protocol": args.protocol, "data": args.data or cfg.data.path, "epoch": state["epoch"],
           "step": state["step"], **results}
    path = Path(args.run) / f"eval_{args.protocol}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"saved {path}")
    del torch
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    import torch

    from selfsup.config import load_config
    from selfsup.train.pretrain import build_views, load_train_data, resolve_normalization
    from selfsup.viz.preview import preview_grid

    overrides = list(args.overrides) + ([f"data.path={args.data}"] if args.data else [])
    cfg = load_config(args.config, overrides)
    ds = load_train_data(cfg)
    resolve_normalization(cfg, ds)
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
    pt.set_defaults(func=_cmd_pretrain)

    ev = sub.add_parser("eval", help="evaluate a run's encoder (kNN or linear probe)")
    ev.add_argument("protocol", choices=["knn", "linear"])
    ev.add_argument("run", help="a run folder")
    ev.add_argument("--data", help="evaluate on another labelled data set (default: the run's)")
    ev.add_argument("--k", type=int, help="kNN neighbours (default: eval.knn_k, 200)")
    ev.add_argument("--temperature", type=float, help="kNN temperature (default: eval.knn_temperature, 0.07)")
    ev.add_argument("--baseline", action="store_true", help="also evaluate the same backbone at random init")
    ev.add_argument("--device", help="cpu, cuda, ... (default: the run's)")
    ev.set_defaults(func=_cmd_eval)

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
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
