"""The analysis subcommands of ``intrakd``: analyze, plot, sweep, report, pool (parsers live in cli.py)."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from intrakd.analysis.agreement import prediction_agreement
from intrakd.analysis.analyze import analyze_predictions, compare_summaries, predict_checkpoint
from intrakd.analysis.report import build_report, read_metrics, to_csv, to_markdown, write_report
from intrakd.config import ConfigError
from intrakd.progress import say


def _run_folder(checkpoint: str) -> Path:
    """The run folder of a checkpoint (``RUN/checkpoints/last.pt`` -> ``RUN``)."""
    path = Path(checkpoint)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def short_names(paths: list[Path]) -> list[str]:
    """The fewest trailing path components that tell the paths apart (``a/x/seed0``, ``b/x/seed0``
    -> ``a/x/seed0``, ``b/x/seed0``; ``a/seed0``, ``b/seed1`` -> ``seed0``, ``seed1``)."""
    parts = [p.resolve().parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyse one checkpoint (or two with ``--compare``): JSON to stdout and ``--out``, PNG plots."""
    checkpoints = [args.checkpoint] + ([args.compare] if args.compare else [])
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file: analyze writes a folder (analysis.json and plots); "
                          "choose a folder")
    names = args.names or short_names([_run_folder(c) for c in checkpoints])
    if len(names) != len(checkpoints):
        raise ConfigError(f"--names needs {len(checkpoints)} names, one per checkpoint")
    if len(set(names)) != len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    predictions, results = [], []
    for checkpoint in checkpoints:
        pred, info = predict_checkpoint(checkpoint, args.split, args.data_root, args.model, args.device)
        predictions.append(pred)
        results.append({**info, **analyze_predictions(pred, args.temperature, args.bins)})
    output: dict[str, Any] = {"models": dict(zip(names, results))}
    if args.compare:
        output["difference"] = {"of": f"{names[1]} - {names[0]}", **compare_summaries(results[0], results[1])}
        output["agreement"] = {"of": f"{names[0]} vs {names[1]}", **prediction_agreement(
            predictions[0].logits, predictions[1].logits, predictions[0].labels, args.temperature)}
    shown = {name: {k: v for k, v in r.items() if not isinstance(v, (dict, list))} for name, r in zip(names, results)}
    compared = {k: output[k] for k in ("difference", "agreement")} if args.compare else {}
    print(json.dumps({"models": shown, **compared}, indent=2))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "analysis.json").write_text(json.dumps(output, indent=1) + "\n")
        written = [out / "analysis.json"]
        if not args.no_plots:
            say(f"intrakd analyze: plotting into {out} (t-SNE map of up to {args.tsne_points} images, distances, "
                "soft labels, reliability, per class); the t-SNE map may take minutes")
            written += _analysis_plots(out, list(zip(names, predictions)), results, args)
        say("written: " + ", ".join(str(p) for p in written))
    return 0


def _analysis_plots(out: Path, named: list, results: list[dict[str, Any]], args: argparse.Namespace) -> list[Path]:
    from intrakd.analysis import plots

    names = [n for n, _ in named]
    return [
        plots.plot_embedding_map(named, out / "embedding_tsne.png", args.tsne_classes, args.tsne_points, args.seed),
        plots.plot_distance_histograms(named, out / "distances.png", seed=args.seed),
        plots.plot_soft_labels(named, out / "soft_labels.png", args.temperature),
        plots.plot_reliability([(n, r["reliability"], r["ece"]) for n, r in zip(names, results)],
                               out / "reliability.png"),
        plots.plot_per_class([(n, r["per_class"]) for n, r in zip(names, results)], out / "per_class.png"),
    ]


def cmd_plot(args: argparse.Namespace) -> int:
    """Training curves of one or more run folders (their ``metrics.jsonl``) into one PNG."""
    from intrakd.analysis.plots import plot_training_curves

    runs = []
    for run_dir in map(Path, args.runs):
        records = read_metrics(run_dir)
        if not records:
            raise FileNotFoundError(f"{run_dir / 'metrics.jsonl'} is missing or empty: is {run_dir} a run folder?")
        runs.append(records)
    named = list(zip(short_names([Path(r) for r in args.runs]), runs))
    out = Path(args.out or Path(args.runs[0]) / "curves.png")
    written = plot_training_curves(named, out)
    say(f"written: {written}")
    if args.json:
        print(json.dumps({"written": str(written)}))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run (or continue, or list with ``--dry-run``) the sweep of a YAML file."""
    from intrakd.analysis.sweep import check_finished, describe, load_sweep, plan, record_spec, run_sweep

    spec = load_sweep(args.spec)
    if args.out:
        spec.out = Path(args.out)
    extra = ([f"data.root={args.data_root}"] if args.data_root else []) + list(args.overrides)
    jobs = plan(spec, args.seeds, args.only, extra)
    if not jobs:
        raise ConfigError(f"no cell of {args.spec} matches --only {args.only!r}")
    check_finished(jobs)  # before anything is written
    if args.dry_run:
        if args.json:
            print(json.dumps([{"kind": j.kind, "name": j.name, "seed": j.seed, "out": str(j.out),
                               "finished": j.finished} for j in jobs], indent=2))
        else:
            print(describe(jobs))
        return 0
    record_spec(args.spec, spec)
    counts = run_sweep(spec, jobs)
    say(f"sweep {args.spec}: {counts['ran']} run, {counts['resumed']} continued, {counts['restarted']} restarted, "
        f"{counts['skipped']} already finished; runs in {spec.out}")
    if args.json:
        print(json.dumps({**counts, "out": str(spec.out)}, indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Group the runs under the given folders; print and write a markdown and CSV table."""
    report = build_report(args.runs, args.metrics, args.compare, args.baseline, args.where)
    text = to_markdown(report)
    if args.title:
        text = f"## {args.title}\n\n{text}"
    if args.json:
        print(json.dumps(list(csv.DictReader(io.StringIO(to_csv(report)))), indent=2))
    else:
        print(text)
    if args.out:
        md, table = write_report(report, args.out)
        if args.title:
            md.write_text(text)
        say(f"written: {md}, {table}")
    return 0


def _read_json(path: str) -> Any:
    """The JSON document in ``path``; a :class:`ConfigError` naming the file when it is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err})") from None


def _read_estimates(path: str) -> list[dict]:
    """The estimates of ``intrakd pool``, each checked for name, mean, ci95 and n."""
    items = _read_json(path)
    if not isinstance(items, list) or len(items) < 2:
        raise ConfigError(f"{path}: expected a JSON list of at least two estimates")
    for item in items:
        missing = [k for k in ("name", "mean", "ci95", "n") if k not in item]
        if missing:
            raise ConfigError(f"{path}: estimate {item.get('name', item)!r} lacks {', '.join(missing)}; "
                             f'give each {{"name", "mean", "ci95": [low, high], "n"}}')
    return items


def cmd_pool(args: argparse.Namespace) -> int:
    """Pool one effect over protocols; print a markdown table; optionally store it in a summary file."""
    from intrakd.analysis.comparison import pool_effects, se_from_interval

    items = _read_estimates(args.estimates)
    target = None
    if args.into:
        target = _read_json(args.into)
        if not isinstance(target, dict):
            raise ConfigError(f"{args.into}: expected a JSON object to store the pooled estimate in")
    ses = [se_from_interval(*item["ci95"], int(item["n"])) for item in items]
    pooled = pool_effects([float(item["mean"]) for item in items], ses)
    lines = ["| estimate | mean | 95% CI | n | standard error |", "|---|---|---|---|---|"]
    for item, se in zip(items, ses, strict=True):
        low, high = item["ci95"]
        lines.append(f"| {item['name']} | {item['mean']:+.2f} | [{low:+.2f}, {high:+.2f}] | {item['n']} | {se:.3f} |")
    for which, label in (("fixed", "fixed effect"), ("random", "random effects (DerSimonian-Laird)")):
        mean = pooled.fixed if which == "fixed" else pooled.random
        se = pooled.fixed_se if which == "fixed" else pooled.random_se
        low, high = pooled.interval(which)
        lines.append(f"| **{label}** | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] | | {se:.3f} |")
    lines.append(f"\nk = {pooled.k}; Q = {pooled.q:.2f} on {pooled.k - 1} df (p = {pooled.q_p:.3f}); "
                 f"I^2 = {100 * pooled.i2:.0f}%; tau^2 = {pooled.tau2:.3f}")
    result = {
        "k": pooled.k, "estimates": items,
        "fixed": {"mean": pooled.fixed, "se": pooled.fixed_se, "ci95": list(pooled.interval("fixed"))},
        "random": {"mean": pooled.random, "se": pooled.random_se, "ci95": list(pooled.interval("random"))},
        "q": pooled.q, "q_p": pooled.q_p, "i2": pooled.i2, "tau2": pooled.tau2,
    }
    print(json.dumps(result, indent=2) if args.json else "\n".join(lines))
    if target is not None:
        target[args.key] = result
        Path(args.into).write_text(json.dumps(target, indent=1) + "\n")
        say(f"written: {args.into}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint (``--format``) after checking the file's outputs against PyTorch's."""
    from intrakd.analysis.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.format, args.out, args.data_root)
    say(f"intrakd export: {result['format']} file agrees with PyTorch on {result['checked_images']} images "
        f"(max |logit difference| {result['max_abs_difference']:.2e}, tolerance {result['tolerance']:g}); "
        f"input uint8 {result['input']['shape']}")
    say(f"written: {result['written']}")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """The most probable classes of image files: one line per image, or one JSON document."""
    from intrakd.analysis.predict import predict_images

    results = predict_images(args.checkpoint, args.images, args.top, args.data_root)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            print(item["image"] + "\t" + "  ".join(f"{t['class']} {t['probability']:.3f}" for t in item["top"]))
    return 0
