"""The ``intrakd`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from intrakd.config import ConfigError, StudentConfig, TeacherConfig, load_config


def _default_out(command: str) -> str:
    return str(Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")


def _run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. optim.epochs=30 intra.weight=0.02 data.dataset=digits")
    parser.add_argument("--config", help="YAML file of settings (overrides apply on top)")
    parser.add_argument("--out", help="run folder (default runs/<command>-<time>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument("--data-root", help="shortcut for data.root=PATH")


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = [f"data.root={args.data_root}"] if args.data_root else []
    return extra + list(args.overrides)


def cmd_train_teacher(args: argparse.Namespace) -> int:
    from intrakd.train import train_teacher

    overrides = _overrides(args) + (["intra.weight=0"] if args.vanilla else [])
    cfg = load_config(TeacherConfig, args.config, overrides)
    summary = train_teacher(cfg, args.out or _default_out("teacher"), overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from intrakd.train import distill

    overrides = _overrides(args) + ([f"teacher={args.teacher}"] if args.teacher else [])
    cfg = load_config(StudentConfig, args.config, overrides)
    summary = distill(cfg, args.out or _default_out("student"), overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from intrakd.analysis import embedding_geometry, soft_label_entropy
    from intrakd.config import DataConfig, from_dict
    from intrakd.data import build_datasets
    from intrakd.train import classifier_from_checkpoint, predict, resolve_device
    from intrakd.train.evaluate import accuracy

    from intrakd.train.checkpoint import read_checkpoint

    stored = read_checkpoint(args.checkpoint).get("config", {}).get("data", {})
    data_values = {**stored, **({"dataset": args.dataset} if args.dataset else {}),
                   **({"root": args.data_root} if args.data_root else {})}
    data_cfg = from_dict(DataConfig, data_values, prefix="data.")
    _, eval_set, split = build_datasets(data_cfg)
    model, _ = classifier_from_checkpoint(args.checkpoint, args.model, eval_set.num_classes)
    device = resolve_device(args.device)
    logits, embeddings, labels = predict(model.to(device), eval_set, data_cfg.eval_batch_size)
    result = {"checkpoint": args.checkpoint, "split": split, "images": len(eval_set),
              "acc": accuracy(logits, labels), **embedding_geometry(embeddings, labels),
              "soft_label_entropy_T4": soft_label_entropy(logits, 4.0)}
    print(json.dumps(result, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from intrakd.demo import results_table, run_demo

    results = run_demo(out=args.out, dataset=args.dataset, data_root=args.data_root, epochs=args.epochs,
                       train_per_class=args.train_per_class, seed=args.seed, device=args.device,
                       overwrite=args.overwrite)
    print(results_table(results))
    print(f"\nwritten: {Path(args.out) / 'results.md'}, {Path(args.out) / 'results.json'}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from intrakd.models import list_models

    print("\n".join(list_models()))
    return 0


# --- analysis: analyze, plot, sweep, report (implemented in intrakd.analysis.commands) -------------


def _analysis(name: str):
    """The handler ``cmd_<name>`` of intrakd.analysis.commands, imported when the command runs."""
    def handler(args: argparse.Namespace) -> int:
        from intrakd.analysis import commands

        return getattr(commands, f"cmd_{name}")(args)

    return handler


def add_analysis_commands(sub: argparse._SubParsersAction) -> None:
    """The subcommands that look at checkpoints and run folders."""
    p = sub.add_parser("analyze", help="geometry, soft labels, calibration and plots of a checkpoint "
                                       "(two side by side with --compare)")
    p.add_argument("--checkpoint", required=True, help="an intrakd run checkpoint (records its data settings)")
    p.add_argument("--compare", metavar="CKPT2", help="a second checkpoint, analysed on the same images")
    p.add_argument("--names", nargs="+", help="names of the checkpoints in tables and plots (default: run folders)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="split of the run's dataset (default test; val needs data.val_per_class > 0)")
    p.add_argument("--data-root", help="folder of the dataset, if it moved since training")
    p.add_argument("--model", help="architecture, for checkpoints that do not name it")
    p.add_argument("--temperature", type=float, default=4.0, help="soft-label temperature T (default 4)")
    p.add_argument("--bins", type=int, default=15, help="confidence bins of the ECE (default 15)")
    p.add_argument("--out", help="folder for analysis.json and the PNG plots")
    p.add_argument("--no-plots", action="store_true", help="write analysis.json only")
    p.add_argument("--tsne-classes", type=int, default=20, help="classes shown in the t-SNE map (default 20)")
    p.add_argument("--tsne-points", type=int, default=2000, help="images in the t-SNE map (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples drawn for plots")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_analysis("analyze"))

    p = sub.add_parser("plot", help="training curves (every logged value) of run folders as one PNG")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="PNG file (default RUN_DIR/curves.png of the first run)")
    p.set_defaults(func=_analysis("plot"))

    p = sub.add_parser("sweep", help="run or continue a grid of runs described by a YAML file "
                                     "(finished cells are skipped)")
    p.add_argument("spec", help="sweep YAML (see configs/ and intrakd.analysis.sweep)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides applied to every run")
    p.add_argument("--out", help="root folder of the runs (default: the file's out)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the file's seeds)")
    p.add_argument("--only", metavar="GLOB", help="teacher cells whose name matches GLOB (and their students)")
    p.add_argument("--data-root", help="shortcut for data.root=PATH")
    p.add_argument("--dry-run", action="store_true", help="list the runs and which are finished; run nothing")
    p.set_defaults(func=_analysis("sweep"))

    p = sub.add_parser("report", help="mean +- std over seeds of grouped runs, differences from the "
                                      "vanilla-teacher baseline with 95%% CIs (markdown and CSV)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders or folders holding them")
    p.add_argument("--out", metavar="PREFIX", help="write PREFIX.md and PREFIX.csv")
    p.add_argument("--metrics", nargs="+", help="columns (default: accuracy, geometry, soft labels, ECE, cost)")
    p.add_argument("--compare", nargs="+", help="metrics compared with the baseline (default test_acc or val_acc)")
    p.add_argument("--baseline", default="intra.weight=0",
                   help="condition of the baseline groups (default intra.weight=0: vanilla teachers and their "
                        "students)")
    p.add_argument("--where", nargs="+", default=[], metavar="KEY=VALUE",
                   help="keep only runs with these settings (a student matches on its teacher's too)")
    p.add_argument("--title", help="heading of the markdown table")
    p.set_defaults(func=_analysis("report"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intrakd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-teacher", help="train a teacher (enriched by default; --vanilla for plain CE)")
    _run_args(p)
    p.add_argument("--vanilla", action="store_true", help="shortcut for intra.weight=0")
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("distill", help="distil a student from a frozen teacher checkpoint")
    _run_args(p)
    p.add_argument("--teacher", help="teacher checkpoint (shortcut for teacher=PATH)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="accuracy and embedding geometry of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--data-root")
    p.add_argument("--model", help="architecture, for checkpoints that do not name it")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="vanilla vs enriched teacher and their students, one table")
    p.add_argument("--dataset", default="digits", help="digits (embedded, default) or cifar100")
    p.add_argument("--data-root", help="folder holding cifar-100-python (for --dataset cifar100)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the dataset's demo recipe)")
    p.add_argument("--train-per-class", type=int, help="train on the first N images of each class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the model names")
    p.set_defaults(func=cmd_models)

    add_analysis_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"intrakd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"intrakd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
