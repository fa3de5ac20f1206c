"""Sweeps: a grid of teacher configurations x seeds, optionally a student distilled from each.

A sweep is described by a YAML file::

    out: /path/to/experiments        # root of the run folders (``--out`` replaces it)
    seeds: [0, 1, 2]
    common: {data: {...}, optim: {...}}       # settings for teachers and students alike
    teacher:
      config: {model: resnet20}               # teacher settings (on top of common)
      grid:                                   # a mapping key -> values (the product of the lists),
        - {intra.weight: [0]}                 # or a list of such mappings (the union of their products)
        - {intra.weight: [0.02], intra.delta: [-1, 0.5]}
    student:                                  # optional (null: none): a student from every teacher run
      config: {model: resnet8}
      grid: {distill.temperature: [4]}        # optional
      teachers: ["intra.weight=0", "intra.weight=0.02,intra.delta=0.5"]  # optional: which cells
      teacher_outputs: true                   # optional: the students of each teacher run read its logits
                                              # from one store, made on first need (logit methods only)
      seeds_per_teacher: 3                    # optional: students of each cell per teacher run (default 1)
    evaluate: [test]                          # optional: splits analysed after each run
    temperature: 4                            # soft-label temperature of those analyses
    extends: protocol.yaml                    # optional: a sweep file (path relative to this one)
                                              # whose settings this one updates (mappings merge)

Every cell is a normal run folder: ``OUT/teachers/<cell>/seed<k>`` and
``OUT/students/<teacher cell>/<student cell>/seed<k>``, the student of seed k distilled from the
teacher of seed k. With ``student.seeds_per_teacher: n``, each teacher run gets n students of each
student cell: the first as above, student j (1 <= j < n) of seed ``k + 1000 j`` in
``.../seed<k>-student<j>`` (independent initialisation, data order and augmentation, one teacher).
Cell names list the cell's overrides (``base`` for none). A cell whose folder
holds ``summary.json`` is finished and skipped, so rerunning the same command continues an
interrupted sweep; a started but unfinished cell continues from its newest checkpoint (started
again when it cannot: another configuration, no intact checkpoint). A finished cell
whose stored configuration differs from the sweep's (another protocol written to the same ``--out``)
is an error before anything runs, so runs of two protocols never mix in one table. After each run,
each split in ``evaluate`` is analysed (its last checkpoint) into ``eval_<split>.json`` unless that
file exists.

With ``student.teacher_outputs``, the teacher of seed k runs once more, before its first student
runs, over the views its students draw (``intrakd teacher-outputs``, every class's logits as computed):
into ``OUT/stores/<teacher cell>/seed<k>``, for the most epochs and the most views (MLKD's strong view)
any of its students needs, with the settings of the student needing the most views. Its students then
read the teacher's logits from it (``teacher_outputs=``) and equal the students of the live teacher:
their data settings must be alike (a student whose settings the store does not hold is refused by name).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import intrakd.objectives  # noqa: F401  registers the distillation methods that configurations name
from intrakd.analysis.analyze import SPLITS, analyze_predictions, predict_checkpoint
from intrakd.analysis.runfolders import flatten
from intrakd.config import (
    PATH_KEYS,
    RESULT_NEUTRAL_KEYS,
    ConfigError,
    StudentConfig,
    TeacherConfig,
    key_in,
    load_config,
    read_yaml,
    to_dict,
)
from intrakd.progress import format_duration, say
from intrakd.train.runfolder import upgrade_stored

RESULT_NEUTRAL = ("command", "teacher_outputs", *RESULT_NEUTRAL_KEYS)
"""Settings in which a finished run may differ from the sweep (:func:`~intrakd.config.key_in`): the
result-neutral ones, the command (the stage tells the kind) and the store a student read its teacher's
logits from (a sweep's stores hold every class as computed: such a student equals the live teacher's)."""
SPEC_KEYS = {"extends", "out", "seeds", "common", "teacher", "student", "evaluate", "temperature"}
STAGE_KEYS = {"teacher": {"config", "grid"}, "student": {"config", "grid", "teachers", "teacher_outputs",
                                                                "seeds_per_teacher"}}
STUDENT_SEED_STRIDE = 1000
"""Student j of the teacher run of seed k has seed ``k + STUDENT_SEED_STRIDE * j``."""


@dataclass
class Cell:
    """One configuration of a stage: its name and overrides (seed not included)."""

    name: str
    overrides: list[tuple[str, Any]]


@dataclass
class StoreJob:
    """A store of one teacher run's outputs, shared by its students (``student.teacher_outputs``)."""

    out: Path
    config: StudentConfig
    """The settings of the student needing the most views (with the teacher checkpoint)."""
    epochs: int
    """The most epochs any of its students trains."""

    @property
    def finished(self) -> bool:
        return (self.out / "manifest.json").is_file()


@dataclass
class Job:
    """One run of a sweep."""

    kind: str
    """'teacher' or 'student'."""
    name: str
    """Cell name (for students ``<teacher cell>/<student cell>``)."""
    seed: int
    out: Path
    config: TeacherConfig | StudentConfig
    store: StoreJob | None = None
    """The store a student reads its teacher's logits from, made before the first student that needs it."""

    @property
    def finished(self) -> bool:
        return (self.out / "summary.json").is_file()


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    out: Path
    seeds: list[int]
    common: dict[str, Any]
    teacher_config: dict[str, Any]
    teacher_cells: list[Cell]
    student_config: dict[str, Any] | None
    student_cells: list[Cell]
    student_teachers: list[str] | None
    student_teacher_outputs: bool
    students_per_teacher: int
    evaluate: list[str]
    temperature: float


def _format(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text.replace("/", "_")


def cell_name(overrides: list[tuple[str, Any]]) -> str:
    """Folder name of a cell: ``key=value`` joined by commas, ``base`` for no overrides."""
    return ",".join(f"{k}={_format(v)}" for k, v in overrides) or "base"


def expand_grid(grid: Any, where: str) -> list[Cell]:
    """Cells of a grid: a mapping ``key -> list of values`` (their product) or a list of mappings."""
    if grid is None:
        return [Cell("base", [])]
    parts = grid if isinstance(grid, list) else [grid]
    cells: list[Cell] = []
    for part in parts:
        if not isinstance(part, dict) or not part:
            raise ConfigError(f"{where}: each grid entry must be a non-empty mapping key -> list of values, "
                              f"got {part!r}")
        keys = list(part)
        for key in keys:
            if not isinstance(part[key], list) or not part[key]:
                raise ConfigError(f"{where}: values of {key} must be a non-empty list, got {part[key]!r}")
        for combination in itertools.product(*(part[k] for k in keys)):
            overrides = list(zip(keys, combination))
            cells.append(Cell(cell_name(overrides), overrides))
    names = [c.name for c in cells]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: cell {duplicates[0]} is listed twice")
    return cells


def _section(spec: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = spec.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {name} must be a mapping, got {value!r}")
    return value


def _read_spec(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw settings of a sweep file, merged over those of the file it ``extends``."""
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    if path.resolve() in chain:
        raise ConfigError(f"{path}: extends itself (through {' -> '.join(str(p) for p in chain)})")
    spec = read_yaml(path) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parent = spec.pop("extends", None)
    if parent is None:
        return spec
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be the path of a sweep file, got {parent!r}")
    return _merge(_read_spec(path.parent / parent, (*chain, path.resolve())), spec)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (unknown keys and malformed grids are errors)."""
    path = Path(path)
    spec = _read_spec(path)
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key {unknown[0]}; valid keys: {', '.join(sorted(SPEC_KEYS))}")
    if "teacher" not in spec:
        raise ConfigError(f"{path}: a sweep needs a teacher section")
    stages = {}
    for stage in ("teacher", "student"):
        section = _section(spec, stage, str(path))
        bad = sorted(set(section) - STAGE_KEYS[stage])
        if bad:
            raise ConfigError(f"{path}: unknown key {stage}.{bad[0]}; valid: {', '.join(sorted(STAGE_KEYS[stage]))}")
        stages[stage] = section
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    evaluate = spec.get("evaluate") or []
    if not isinstance(evaluate, list) or any(s not in SPLITS for s in evaluate):
        raise ConfigError(f"{path}: evaluate must be a list of splits among {', '.join(SPLITS)}, got {evaluate!r}")
    teachers = stages["student"].get("teachers")
    if teachers is not None and (not isinstance(teachers, list) or not all(isinstance(t, str) for t in teachers)):
        raise ConfigError(f"{path}: student.teachers must be a list of teacher cell names (patterns allowed)")
    shared = stages["student"].get("teacher_outputs", False)
    if not isinstance(shared, bool):
        raise ConfigError(f"{path}: student.teacher_outputs must be true or false, got {shared!r}")
    per_teacher = stages["student"].get("seeds_per_teacher", 1)
    if isinstance(per_teacher, bool) or not isinstance(per_teacher, int) or per_teacher < 1:
        raise ConfigError(f"{path}: student.seeds_per_teacher must be an integer >= 1, got {per_teacher!r}")
    if per_teacher > 1 and shared:
        raise ConfigError(f"{path}: student.teacher_outputs stores the teacher's outputs for the batches of one "
                          f"seed, and the {per_teacher} students per teacher (student.seeds_per_teacher) draw "
                          "batches of their own seeds: drop one of the two")
    teacher_cells = expand_grid(stages["teacher"].get("grid"), f"{path}: teacher.grid")
    names = [cell.name for cell in teacher_cells]
    unmatched = [t for t in teachers or [] if not fnmatch.filter(names, t)]
    if unmatched:
        raise ConfigError(f"{path}: student.teachers {unmatched[0]!r} matches no teacher cell; the cells are "
                          + ", ".join(names))
    return SweepSpec(
        out=Path(spec.get("out") or "runs/sweep"),
        seeds=seeds,
        common=_section(spec, "common", str(path)),
        teacher_config=_section(stages["teacher"], "config", f"{path}: teacher"),
        teacher_cells=teacher_cells,
        student_config=(_section(stages["student"], "config", f"{path}: student")
                        if spec.get("student") is not None else None),
        student_cells=expand_grid(stages["student"].get("grid"), f"{path}: student.grid"),
        student_teachers=teachers,
        student_teacher_outputs=shared,
        students_per_teacher=per_teacher,
        evaluate=evaluate,
        temperature=float(spec.get("temperature", 4.0)),
    )


def student_folder(seed: int, j: int) -> str:
    """Folder name of student ``j`` (0 for the first) of the teacher run of ``seed``."""
    return f"seed{seed}" + (f"-student{j}" if j else "")


def _override_strings(overrides: list[tuple[str, Any]]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in overrides]


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested settings, later parts winning."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
    return merged


def plan(spec: SweepSpec, seeds: list[int] | None = None, only: str | None = None,
         extra: list[str] | None = None) -> list[Job]:
    """Every run of the sweep in execution order: per seed, each teacher cell then its students.

    ``only`` (a glob on teacher cell names) selects cells; ``extra`` overrides (``key=value``)
    apply to every run, after the cell's own.
    """
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    out = Path(os.path.abspath(spec.out))  # as the runs record their teacher: the same from any directory
    for seed in seeds or spec.seeds:
        for cell in spec.teacher_cells:
            if only and not fnmatch.fnmatch(cell.name, only):
                continue
            overrides = _override_strings(cell.overrides) + list(extra or []) + [f"seed={seed}"]
            cfg = load_config(TeacherConfig, base=_merge(spec.common, spec.teacher_config), overrides=overrides)
            identity = json.dumps({k: v for k, v in to_dict(cfg).items() if k != "seed"}, sort_keys=True)
            if seen.setdefault(identity, cell.name) != cell.name:
                raise ConfigError(f"teacher cells {seen[identity]} and {cell.name} are the same configuration")
            teacher = Job("teacher", cell.name, seed, out / "teachers" / cell.name / f"seed{seed}", cfg)
            jobs.append(teacher)
            if spec.student_config is None or not _selected(cell.name, spec.student_teachers):
                continue
            checkpoint = teacher.out / "checkpoints" / "last.pt"
            students = []
            for student, j in itertools.product(spec.student_cells, range(spec.students_per_teacher)):
                student_seed = seed + STUDENT_SEED_STRIDE * j
                s_overrides = _override_strings(student.overrides) + list(extra or []) + [f"seed={student_seed}"]
                s_cfg = load_config(StudentConfig, base=_merge(spec.common, spec.student_config,
                                                               {"teacher": str(checkpoint)}), overrides=s_overrides)
                students.append(Job("student", f"{cell.name}/{student.name}", seed,
                                    out / "students" / cell.name / student.name / student_folder(seed, j), s_cfg))
            if spec.student_teacher_outputs:
                students = _sharing_a_store(students, out / "stores" / cell.name / f"seed{seed}")
            jobs += students
    return jobs


def _sharing_a_store(students: list[Job], out: Path) -> list[Job]:
    """``students`` (of one teacher run) reading its logits from one store in ``out``, made for the most
    views and epochs they need; a method that reads more of the teacher than its logits is an error."""
    from intrakd.objectives.registry import distiller_class

    for job in students:
        method = distiller_class(job.config.distill.method)
        if method.kind != "logits":
            raise ConfigError(f"student cell {job.name}: distill.method={job.config.distill.method} reads the "
                              f"teacher's "
                              f"{method.kind}, which a store of its outputs does not hold: drop "
                              "student.teacher_outputs or that cell")
    widest = max(students, key=lambda job: distiller_class(job.config.distill.method).num_views)
    store = StoreJob(out, widest.config, max(job.config.optim.epochs for job in students))
    return [dataclasses.replace(job, config=dataclasses.replace(job.config, teacher_outputs=str(out)), store=store)
            for job in students]


def _selected(name: str, patterns: list[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatch(name, p) for p in patterns)


def evaluate_run(run_dir: Path, splits: list[str], temperature: float, device: str = "auto") -> list[Path]:
    """Analyse the run's last checkpoint on each split into ``eval_<split>.json`` (existing files kept)."""
    written = []
    for split in splits:
        path = run_dir / f"eval_{split}.json"
        if path.is_file():
            continue
        pred, info = predict_checkpoint(run_dir / "checkpoints" / "last.pt", split, device=device)
        result = {**info, **analyze_predictions(pred, temperature)}
        partial = path.with_suffix(".json.partial")  # an interrupted write leaves no eval file behind
        partial.write_text(json.dumps(result, indent=1) + "\n")
        partial.replace(path)
        written.append(path)
    return written


def stored_differences(job: Job) -> list[str]:
    """``key: stored -> sweep`` for each setting in which the run already in ``job.out`` differs from
    the job (settings in :data:`RESULT_NEUTRAL` and keys missing on either side ignored)."""
    path = job.out / "config.yaml"
    if not path.is_file():
        return []
    stored = flatten(upgrade_stored(read_yaml(path) or {}))
    wanted = flatten(to_dict(job.config))
    return [f"{key}: {stored[key]!r} -> {wanted[key]!r}" for key in sorted(stored.keys() & wanted.keys())
            if not key_in(key, RESULT_NEUTRAL) and _compared(key, stored[key]) != _compared(key, wanted[key])]


def _compared(key: str, value: Any) -> Any:
    """A setting as compared: a path (:data:`~intrakd.config.PATH_KEYS`) resolved, so that the
    absolute path a run records and the relative one a sweep file names are the same setting."""
    return os.path.realpath(value) if key in PATH_KEYS and isinstance(value, str) else value


def check_finished(jobs: list[Job]) -> None:
    """Refuse a sweep whose finished runs were made with other settings (they would be skipped and
    reported as if they were this sweep's)."""
    for job in jobs:
        differences = stored_differences(job) if job.finished else []
        if differences:
            raise ConfigError(
                f"{job.out} holds a finished run with other settings ({'; '.join(differences[:3])}"
                f"{'; ...' if len(differences) > 3 else ''}): write this sweep to another --out, "
                "or delete that folder to run it again")


def run_sweep(spec: SweepSpec, jobs: list[Job], log: Callable[[str], None] = say) -> dict[str, int]:
    """Run the unfinished jobs in order and analyse each finished one; returns counts of what happened.
    Nothing runs if a finished run was made with other settings (:func:`check_finished`). A started
    run is continued from its newest checkpoint, or started again when it cannot be (another
    configuration, no intact checkpoint)."""
    from intrakd.config import ResumeError
    from intrakd.models.checkpoint import CheckpointError
    from intrakd.runs import distill, teacher_outputs, train_teacher
    from intrakd.train.signals import Interrupted

    check_finished(jobs)
    counts = {"skipped": 0, "ran": 0, "resumed": 0, "restarted": 0}
    todo = sum(not j.finished for j in jobs)
    log(f"sweep: {len(jobs)} runs in {spec.out}, {len(jobs) - todo} already finished, {todo} to run")
    took: list[float] = []
    for i, job in enumerate(jobs, 1):
        where = f"[{i}/{len(jobs)}] {job.kind} {job.name} seed {job.config.seed}"
        if job.finished:
            counts["skipped"] += 1
        else:
            if job.kind == "student" and not Path(job.config.teacher).is_file():
                raise FileNotFoundError(f"{where}: teacher checkpoint {job.config.teacher} is missing")
            if job.store is not None and not job.store.finished:
                log(f"{where}: storing the teacher's outputs for its students in {job.store.out}")
                teacher_outputs(job.store.config, job.store.out, job.store.epochs)
            run = train_teacher if job.kind == "teacher" else distill
            label = f"{i}/{len(jobs)} {job.kind} {job.name} seed {job.config.seed}"
            start = time.perf_counter()
            try:
                if (job.out / "config.yaml").exists():
                    try:
                        log(f"{where}: continuing (unfinished) in {job.out}")
                        run(job.config, job.out, resume=True, label=label)
                        counts["resumed"] += 1
                    except (ResumeError, CheckpointError) as err:
                        log(f"{where}: restarting in {job.out} ({err})")
                        run(job.config, job.out, overwrite=True, label=label)
                        counts["restarted"] += 1
                else:
                    log(f"{where}: running in {job.out}")
                    run(job.config, job.out, label=label)
                    counts["ran"] += 1
            except Interrupted as err:
                raise Interrupted(err.signum, f"{where}: {err}; or run this sweep again: it continues this run, "
                                              "then the others") from err
            took.append(time.perf_counter() - start)
            todo = sum(not j.finished for j in jobs[i:])
            left = f"; {todo} runs to go, about {format_duration(todo * sum(took) / len(took))} left" if todo else ""
            log(f"{where}: done in {format_duration(took[-1])}{left}")
        evaluate_run(job.out, spec.evaluate, spec.temperature, job.config.device)
    return counts


def describe(jobs: list[Job]) -> str:
    """A listing of the jobs and whether each is finished (for ``--dry-run``)."""
    done = sum(j.finished for j in jobs)
    lines = [f"{'done' if j.finished else 'todo'}  {j.kind:<7} seed {j.config.seed}  {j.out}" for j in jobs]
    return "\n".join(lines + [f"{done}/{len(jobs)} finished"])


def record_spec(spec_path: str | Path, spec: SweepSpec) -> Path:
    """Record the sweep file next to its runs (``OUT/sweep-<name>.yaml``) for traceability."""
    spec.out.mkdir(parents=True, exist_ok=True)
    target = spec.out / f"sweep-{Path(spec_path).stem}.yaml"
    target.write_text(Path(spec_path).read_text())
    return target
