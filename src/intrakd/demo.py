"""``intrakd demo``: vanilla vs enriched teacher, a student distilled from each, one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from intrakd.analysis import embedding_geometry, soft_label_stats
from intrakd.config import ConfigError, StudentConfig, TeacherConfig, load_config
from intrakd.data import build_datasets
from intrakd.runs import data_input, distill, resolve_device, train_teacher
from intrakd.train import classifier_from_checkpoint, predict
from intrakd.train.runfolder import RUN_MARKERS

# The recipe for each dataset: the same for both teachers except the intra-class weight.
DEMO_RECIPES: dict[str, dict[str, Any]] = {
    "digits": {
        "teacher_model": "digits_cnn", "student_model": "digits_cnn_small", "epochs": 30,
        "intra_weight": 0.1, "batch_size": 64,
        # 8x8 images: one thread is as fast as two, and stays fast when other jobs share the cores
        # (measured here: 30 s with one thread, 7 minutes with two on a loaded 2-core machine)
        "perf": {"threads": 1},
    },
    "cifar100": {
        "teacher_model": "resnet32x4", "student_model": "resnet8x4", "epochs": 240,
        "intra_weight": 0.02, "batch_size": 64, "perf": {},
    },
    "cifar10": {
        "teacher_model": "resnet56", "student_model": "resnet20", "epochs": 240,
        "intra_weight": 0.02, "batch_size": 64, "perf": {},
    },
    **{name: {"teacher_model": "digits_cnn", "student_model": "digits_cnn_small", "epochs": 15,
              "intra_weight": 0.1, "batch_size": 128, "perf": {}} for name in ("mnist", "fashion_mnist")},
}


def run_demo(
    out: str | Path = "runs/demo",
    dataset: str = "digits",
    data_root: str | None = None,
    epochs: int | None = None,
    train_per_class: int | None = None,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train both teachers and both students; write ``results.md`` and ``results.json``."""
    if dataset not in DEMO_RECIPES:
        raise ConfigError(f"unknown demo dataset {dataset!r}; available: {', '.join(DEMO_RECIPES)}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    recipe = DEMO_RECIPES[dataset]
    epochs = epochs or recipe["epochs"]
    out = Path(out)
    _check_no_earlier_demo(out, overwrite)
    common = {
        "seed": seed, "device": device,
        "data": {"dataset": dataset, "root": data_root, "batch_size": recipe["batch_size"],
                 "train_per_class": train_per_class},
        "optim": {"epochs": epochs},  # the default milestones, scaled to the epochs
        "perf": recipe["perf"],
    }
    rows = []
    for name, weight in (("vanilla", 0.0), ("enriched", recipe["intra_weight"])):
        teacher_cfg = load_config(TeacherConfig, base={**common, "model": recipe["teacher_model"], "views": 2,
                                                       "intra": {"weight": weight}})
        teacher_dir = out / f"teacher_{name}"
        teacher_summary = train_teacher(teacher_cfg, teacher_dir, overwrite=overwrite, label=f"{name} teacher")
        checkpoint = teacher_dir / "checkpoints" / "last.pt"
        student_cfg = load_config(StudentConfig, base={**common, "model": recipe["student_model"],
                                                       "teacher": str(checkpoint)})
        student_summary = distill(student_cfg, out / f"student_{name}", overwrite=overwrite,
                                  label=f"student of the {name} teacher")
        rows.append({"teacher": name, "intra_weight": weight, "teacher_acc": teacher_summary["final_acc"],
                     "student_acc": student_summary["final_acc"],
                     **teacher_geometry(checkpoint, teacher_cfg, device)})
    results = {"dataset": dataset, "epochs": epochs, "seed": seed, "teacher_model": recipe["teacher_model"],
               "student_model": recipe["student_model"], "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = results_table(results)
    (out / "results.md").write_text(table + "\n")
    return results


DEMO_RUNS = ("teacher_vanilla", "student_vanilla", "teacher_enriched", "student_enriched")
"""The run folders of a demo, inside its ``--out``."""


def _check_no_earlier_demo(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds an earlier demo's runs, unless ``overwrite``."""
    found = [name for name in DEMO_RUNS if any((out / name / marker).exists() for marker in RUN_MARKERS)]
    if found and not overwrite:
        raise FileExistsError(f"{out} already holds the runs of an earlier demo ({', '.join(found)}): pass "
                              f"--overwrite to replace them, or choose another --out")


def teacher_geometry(checkpoint: Path, cfg: TeacherConfig, device: str) -> dict[str, float]:
    """Embedding geometry and soft-label entropy (T = 4) of a teacher on the eval split."""
    _, eval_set, _ = build_datasets(cfg.data)
    model, _ = classifier_from_checkpoint(checkpoint, image_shape=eval_set.image_shape,
                                          data_input=data_input(eval_set))
    logits, embeddings, labels = predict(model.to(resolve_device(device)), eval_set)
    return {**embedding_geometry(embeddings, labels),
            "soft_label_entropy_T4": soft_label_stats(logits, labels, 4.0)["soft_entropy"]}


def results_table(results: dict[str, Any]) -> str:
    """The demo's markdown table."""
    title = (f"# intrakd demo: {results['dataset']}, {results['teacher_model']} -> {results['student_model']}, "
             f"{results['epochs']} epochs, seed {results['seed']}")
    header = ("| teacher | lambda | teacher acc | student acc | intra-class dist | inter-class dist | intra/inter "
              "| soft-label entropy (T=4) |")
    lines = [title, "", header, "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(
            f"| {r['teacher']} | {r['intra_weight']} | {r['teacher_acc']:.2f} | {r['student_acc']:.2f} "
            f"| {r['intra_class_distance']:.4f} | {r['inter_class_distance']:.4f} | {r['intra_inter_ratio']:.4f} "
            f"| {r['soft_label_entropy_T4']:.4f} |"
        )
    return "\n".join(lines)
