"""The ``intrakd`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

from intrakd.config import BAD_INPUT, ConfigError, ResumeError, StudentConfig, TeacherConfig, load_config

C = TypeVar("C", TeacherConfig, StudentConfig)

EXIT_BAD_INPUT = 2
"""A configuration, file, dataset or run folder that cannot be used (nothing on disk was changed)."""
EXIT_NONFINITE = 3
"""A loss term was NaN or Inf (the last good checkpoint is kept)."""
EXIT_IO_ERROR = 74
"""Writing failed, e.g. a full disk (sysexits' EX_IOERR; the previous checkpoint is kept)."""
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""The reader of the output went away, e.g. ``| head`` (what a shell reports for a program SIGPIPE stops)."""
EXIT_STATUSES = f"""exit statuses:
  0     done
  {EXIT_BAD_INPUT}     bad input: configuration, files, dataset, run folder (nothing on disk was changed)
  {EXIT_NONFINITE}     a loss term was NaN or Inf (the last good checkpoint is kept)
  {EXIT_IO_ERROR}    a write failed, e.g. a full disk (the previous checkpoint is kept)
  130   stopped by SIGINT, 143 stopped by SIGTERM (a checkpoint was written; continue with --resume DIR)
  {EXIT_BROKEN_PIPE}   the reader of the output went away, e.g. `| head`"""


class IntermixedParser(argparse.ArgumentParser):
    """A subcommand parser that takes options and positional arguments (``KEY=VALUE`` overrides) in
    any order: ``train-teacher data.dataset=digits --out X optim.epochs=1``."""

    _parsing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._parsing:  # argparse's intermixed parsing calls back in (Python < 3.12)
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def _default_out(command: str) -> str:
    return str(Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")


def _run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. optim.epochs=30 intra.weight=0.02 data.dataset=digits")
    parser.add_argument("--preset", help="named recipe as the base configuration (`intrakd presets` lists them); "
                        "--config and overrides apply on top")
    parser.add_argument("--config", help="YAML file of settings (overrides apply on top)")
    parser.add_argument("--out", help="run folder (default: runs/<preset> with --preset, else runs/<command>-<time>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the run in DIR from its newest intact checkpoint, with the configuration in "
                             "DIR/config.yaml (overrides may change only device, data.root, teacher, checkpoint.* "
                             "and train.skip_nonfinite_steps)")
    parser.add_argument("--data-root", help="shortcut for data.root=PATH")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration as YAML and stop (nothing is run or written)")


def _print_config(cfg: TeacherConfig | StudentConfig, command: str) -> None:
    """The resolved configuration on stdout as the run's ``config.yaml`` would hold it (``--print-config``)."""
    import yaml

    from intrakd.config import to_dict
    from intrakd.runs import with_absolute_paths

    print(yaml.safe_dump({"command": command, **to_dict(with_absolute_paths(cfg))}, sort_keys=False), end="")


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = [f"data.root={args.data_root}"] if args.data_root else []
    return extra + list(args.overrides)


def _preset_base(args: argparse.Namespace, kind: str) -> dict[str, Any] | None:
    from intrakd.presets import preset_values

    return preset_values(args.preset, kind) if args.preset else None


def _run_config(
    args: argparse.Namespace, cls: type[C], command: str, kind: str, overrides: list[str]
) -> tuple[C, str]:
    """The configuration of a new run, or of the run ``--resume`` continues, and its folder."""
    if not args.resume:
        base = _preset_base(args, kind)
        if args.out:
            out = args.out
        elif args.preset:
            from intrakd.presets import default_run_dir

            out = default_run_dir(args.preset)
        else:
            out = _default_out(command)
        from intrakd.train.runfolder import check_replaces_no_input

        check_replaces_no_input(out, {"the configuration file": args.config})
        return load_config(cls, args.config, overrides, base=base), out
    from intrakd.runs import load_run_config

    if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ResumeError(f"--resume {args.resume} continues the run in that folder: drop --out {args.out}")
    return load_run_config(cls, args.resume, command, args.config, overrides), args.resume


def _run(args: argparse.Namespace, kind: str, extra: list[str]) -> int:
    """Start or resume a run of ``kind`` ('teacher' or 'student') and print its summary (rank 0)."""
    from intrakd import distributed, runs

    cls, command = (TeacherConfig, "train-teacher") if kind == "teacher" else (StudentConfig, "distill")
    cfg, out = _run_config(args, cls, command, "teacher" if kind == "teacher" else "distill",
                           _overrides(args) + extra)
    if args.print_config:
        _print_config(cfg, command)
        return 0
    if kind == "student" and args.preset and not args.resume:
        _check_preset_teacher(args.preset, cfg)
    fit = runs.train_teacher if kind == "teacher" else runs.distill
    summary = fit(cfg, out, overwrite=args.overwrite, resume=bool(args.resume))
    if distributed.is_main():
        print(json.dumps(summary, indent=2))
    return 0


def _check_preset_teacher(name: str, cfg: StudentConfig) -> None:
    """A student preset's teacher checkpoint must exist: else say which teacher preset makes it."""
    from intrakd.presets import get_preset

    preset = get_preset(name, "distill")
    if preset.teacher_preset and cfg.teacher == preset.values.get("teacher") and not Path(cfg.teacher).is_file():
        raise ConfigError(f"preset {name} distils from the teacher that `intrakd train-teacher --preset "
                          f"{preset.teacher_preset}` trains, and {cfg.teacher} does not exist yet: train that "
                          "teacher first (from this directory), or pass --teacher CHECKPOINT")


def _is_zero(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return False


def cmd_train_teacher(args: argparse.Namespace) -> int:
    if args.vanilla:
        given = [o for o in args.overrides if o.split("=", 1)[0].strip() == "intra.weight"
                 and not _is_zero(o.split("=", 1)[1] if "=" in o else "")]
        if given:
            raise ConfigError(f"--vanilla means intra.weight=0, but {given[-1]} is given too: drop one of them")
    return _run(args, "teacher", ["intra.weight=0"] if args.vanilla else [])


def cmd_distill(args: argparse.Namespace) -> int:
    return _run(args, "student", [f"teacher={args.teacher}"] if args.teacher else [])


def cmd_teacher_outputs(args: argparse.Namespace) -> int:
    from intrakd import distributed, runs

    overrides = _overrides(args) + ([f"teacher={args.teacher}"] if args.teacher else [])
    cfg = load_config(StudentConfig, args.config, overrides, base=_preset_base(args, "distill"))
    if args.print_config:
        _print_config(cfg, "teacher-outputs")
        return 0
    summary = runs.teacher_outputs(cfg, args.out, args.epochs, args.top_k)
    if distributed.is_main():
        print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from intrakd.analysis import embedding_geometry, soft_label_stats
    from intrakd.analysis.analyze import predict_checkpoint
    from intrakd.train import accuracy

    # the same images as `intrakd analyze` of this checkpoint: the whole split, eval_per_class ignored
    pred, info = predict_checkpoint(args.checkpoint, args.split, args.data_root, args.model, args.device,
                                    dataset=args.dataset, command="evaluate")
    result = {"checkpoint": args.checkpoint, "split": info["split"], "images": len(pred.labels),
              "acc": accuracy(pred.logits, pred.labels), "top5": accuracy(pred.logits, pred.labels, 5),
              **embedding_geometry(pred.embeddings, pred.labels),
              "soft_label_entropy_T4": soft_label_stats(pred.logits, pred.labels, 4.0)["soft_entropy"]}
    print(json.dumps(result, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from intrakd.demo import results_table, run_demo
    from intrakd.progress import say

    results = run_demo(out=args.out, dataset=args.dataset, data_root=args.data_root, epochs=args.epochs,
                       train_per_class=args.train_per_class, seed=args.seed, device=args.device,
                       overwrite=args.overwrite)
    print(json.dumps(results, indent=2) if args.json else results_table(results))
    say(f"written: {Path(args.out) / 'results.md'}, {Path(args.out) / 'results.json'}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from intrakd.models import describe_model, list_families, list_models

    if args.timm is not None:
        from intrakd.models.timm_models import list_timm

        found = list_timm(args.timm)
        if args.json:
            print(json.dumps(found, indent=2))
        else:
            print("\n".join(found) if found else f"no timm model matches {args.timm!r}")
        return 0
    rows = [(name, describe_model(name)) for name in list_models()]
    rows += [(f"{prefix}<name>", line) for prefix, line in list_families().items()]
    if args.json:
        print(json.dumps(dict(rows), indent=2))
        return 0
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name.ljust(width)}  {line}" for name, line in rows))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    import yaml

    from intrakd.config import to_dict
    from intrakd.presets import get_preset, list_presets, presets_table

    if args.json:
        shown = [get_preset(args.name)] if args.name else list_presets()
        found = {p.name: {"kind": p.kind, "description": p.description,
                          "published": dataclasses.asdict(p.published) if p.published else None,
                          "method_published": p.method_published, "reference": p.reference,
                          "config": to_dict(p.config())} for p in shown}
        print(json.dumps(found[args.name] if args.name else found, indent=2))
    elif args.name:
        preset = get_preset(args.name)
        print(f"# {preset.name}: {preset.description}")
        if preset.published:
            print(f"# published top-1 teacher / student / KD: {preset.published}")
        if preset.method_published is not None:
            print(f"# published top-1 of this method for the pair: {preset.method_published:.2f}")
        if preset.reference:
            print(f"# recipe follows: {preset.reference}")
        print(yaml.safe_dump(to_dict(preset.config()), sort_keys=False), end="")
    else:
        print(presets_table())
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from intrakd.objectives import describe_methods, differences_table, methods_data, methods_table

    if args.json:
        print(json.dumps(methods_data(), indent=2))
    elif args.markdown:
        print(methods_table() + "\n## Differences from the reference code\n\n" + differences_table(), end="")
    else:
        print(describe_methods())
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
    p.add_argument("--compare", metavar="CKPT2", help="a second checkpoint, analysed on the same images; "
                   "adds their image-by-image agreement (disagreement, the paired test-set SE, the soft labels' KL)")
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

    p = sub.add_parser("pool", help="pool one effect over several protocols: fixed effect and DerSimonian-Laird "
                                    "random effects, with Cochran's Q, I^2 and tau^2")
    p.add_argument("estimates", metavar="JSON",
                   help='a list of {"name", "mean", "ci95": [low, high], "n"}: each a paired t interval over n seeds')
    p.add_argument("--into", metavar="SUMMARY", help="also store the pooled estimate in this JSON file (an object)")
    p.add_argument("--key", default="pooled_student_diff", help="key under which --into stores it")
    p.set_defaults(func=_analysis("pool"))

    p = sub.add_parser("predict", help="the most probable classes of image files, with their probabilities")
    p.add_argument("--checkpoint", required=True, help="an intrakd run checkpoint (records its class names)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    p.add_argument("--top", type=int, help="classes shown per image (default 5, or all of fewer)")
    p.add_argument("--data-root", help="folder of the dataset, if it moved since training")
    p.set_defaults(func=_analysis("predict"))

    p = sub.add_parser("export", help="a checkpoint as an ONNX, TorchScript or torch.export file taking uint8 images "
                                      "(its normalisation included), checked against PyTorch before it is written")
    p.add_argument("--checkpoint", required=True, help="an intrakd run checkpoint")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "pt2"),
                   help="onnx (needs the [export] extra), torchscript (torch.jit; deprecated in torch but loadable "
                        "by libtorch) or pt2 (torch.export)")
    p.add_argument("--out", help="file to write (default: the checkpoint's name with .onnx, .torchscript.pt or .pt2)")
    p.add_argument("--data-root", help="folder of the dataset, if it moved since training")
    p.set_defaults(func=_analysis("export"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intrakd", description=__doc__, epilog=EXIT_STATUSES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from intrakd import __version__

    parser.add_argument("--version", action="version", version=f"intrakd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=IntermixedParser)

    p = sub.add_parser("train-teacher", help="train a teacher (enriched by default; --vanilla for plain CE)",
                       epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _run_args(p)
    p.add_argument("--vanilla", action="store_true", help="shortcut for intra.weight=0")
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("distill", help="distil a student from a frozen teacher checkpoint",
                       epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _run_args(p)
    p.add_argument("--teacher", help="teacher checkpoint (shortcut for teacher=PATH)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("teacher-outputs", help="run a teacher once over the views that students of the same data "
                       "settings and seed draw, and store its logits (distill with teacher_outputs=STORE)",
                       epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="the students' settings, as for distill: data.*, seed, distill.method (its views), "
                        "optim.epochs, perf.precision")
    p.add_argument("--teacher", help="teacher checkpoint (shortcut for teacher=PATH)")
    p.add_argument("--out", required=True, help="folder of the store (run the same command again to continue an "
                                                "interrupted one, or with more --epochs to extend it)")
    p.add_argument("--epochs", type=int, help="epochs of views to store (default: the students' optim.epochs)")
    p.add_argument("--top-k", type=int, help="store the top K logits in float16 and the rest's mass (FKD's compact "
                                             "soft labels) instead of every class as computed")
    p.add_argument("--preset", help="the students' recipe (`intrakd presets`); --config and overrides apply on top")
    p.add_argument("--config", help="YAML file of the students' settings")
    p.add_argument("--data-root", help="shortcut for data.root=PATH")
    p.add_argument("--print-config", action="store_true",
                   help="print the students' resolved configuration as YAML and stop (nothing is run or written)")
    p.set_defaults(func=cmd_teacher_outputs)

    p = sub.add_parser("evaluate", help="accuracy and embedding geometry of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--data-root")
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="split of the run's dataset, whole (default test, the images `intrakd analyze` uses; "
                        "val needs data.val_per_class > 0)")
    p.add_argument("--model", help="architecture, for checkpoints that do not name it")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="vanilla vs enriched teacher and their students, one table")
    p.add_argument("--dataset", default="digits",
                   help="digits (embedded, default), cifar100, cifar10, mnist or fashion_mnist")
    p.add_argument("--data-root", help="folder of the dataset (cifar100, cifar10, mnist, fashion_mnist)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the dataset's demo recipe)")
    p.add_argument("--train-per-class", type=int, help="train on the first N images of each class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace the runs of an earlier demo in --out")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the model names")
    p.add_argument("--timm", metavar="PATTERN", help="list the timm architectures matching a wildcard pattern, "
                   "e.g. 'resnet*' or '*vit_tiny*' ('*': all), with their number of pretrained tags")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("presets", help="list the named recipes (or show one's full configuration)")
    p.add_argument("name", nargs="?", help="a preset to show in full")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("methods", help="list the distillation methods and their settings")
    p.add_argument("--markdown", action="store_true",
                   help="print the methods table (name, paper, kind, recipe, settings) as Markdown")
    p.set_defaults(func=cmd_methods)

    add_analysis_commands(sub)
    for command in sub.choices.values():
        command.add_argument("--json", action="store_true",
                             help="print the result as one JSON document on stdout (messages stay on stderr)")
    return parser


def _report(message: str) -> None:
    """Print an error line to stderr; under torchrun only rank 0 does (every rank exits alike)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from intrakd.train.guards import NonFiniteLoss
    from intrakd.train.signals import Interrupted

    try:
        return args.func(args)
    except Interrupted as err:
        _report(f"intrakd {args.command}: {err}")
        return err.exit_status
    except NonFiniteLoss as err:
        _report(f"intrakd {args.command}: error: {err}")
        return EXIT_NONFINITE
    except BAD_INPUT as err:  # any other exception is a fault of intrakd: it keeps its traceback
        _report(f"intrakd {args.command}: error: {err}")
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # whoever read the output stopped (`intrakd presets | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return EXIT_BROKEN_PIPE
    except OSError as err:
        run = getattr(args, "resume", None) or getattr(args, "out", None) or "DIR"
        full = err.errno == errno.ENOSPC
        hint = f" (the disk is full: free space, then continue with --resume {run})" if full else ""
        _report(f"intrakd {args.command}: error: {err}{hint}")
        return EXIT_IO_ERROR
    except KeyboardInterrupt:
        _report(f"intrakd {args.command}: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
