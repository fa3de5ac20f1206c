"""The wiring of whole runs: data, models, objective and engine built from a configuration.

``train_teacher`` and ``distill`` write a run folder each, and continue one (``resume=True``) from
its newest intact checkpoint.

Nothing on disk is touched before every input has been checked: the configuration, the data, the
teacher checkpoint, the run folder (one that already holds a run is refused unless resumed or
overwritten) and, when resuming, that the configuration matches the run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import yaml
from torch import nn

from intrakd import distributed
from intrakd.config import (
    PATH_KEYS,
    RUN_COMMANDS,
    ConfigError,
    ResumeError,
    StudentConfig,
    TeacherConfig,
    flatten,
    from_dict,
    key_in,
    load_config,
    read_yaml,
    to_dict,
)
from intrakd.data import Batches, Split, TensorBatches, build_datasets, class_names
from intrakd.data.mixing import MixedBatches, describe_mixing
from intrakd.data.teacher_store import (
    LOGIT_DTYPES,
    StoredBatches,
    StoreMismatch,
    StoreWriter,
    TeacherStore,
    view_settings,
    write_epochs,
)
from intrakd.models import ModelInput, check_reads_images, create_model, feed_with, resolve_input
from intrakd.models.checkpoint import (
    CheckpointError,
    CheckpointStore,
    check_class_names,
    check_format,
    classifier_from_checkpoint,
    file_sha256,
    read_checkpoint,
    write_atomic,
)
from intrakd.objectives import IntraClassTeacherObjective, create_distiller
from intrakd.objectives.registry import distiller_class, list_distillers
from intrakd.objectives.stored_teacher import StoredTeacher
from intrakd.progress import Progress, RunPlan, run_intro, say
from intrakd.train.accel import PerfSettings, resolve_perf
from intrakd.train.loop import RunInfo, Trainer
from intrakd.train.runfolder import RunFolder, check_replaces_no_input, upgrade_stored
from intrakd.train.signals import Interrupted
from intrakd.train.stages import describe_schedule

RESUME_MAY_CHANGE = ("device", "data.root", "data.bad_images", "teacher", "checkpoint.", "train.skip_nonfinite_steps",
                     "perf.threads")
"""Settings a resumed run may change: where it runs and finds its inputs (the teacher's content is
checked by its sha256), how often it saves, and whether it skips non-finite steps. Any other
difference (``optim.epochs`` included) is refused: the run would no longer be the one it continues."""

MODEL_FOR_THE_IMAGES = "choose a model made for such images with model=NAME (`intrakd models` lists them)"
"""The fix named when the configured model cannot read the dataset's images."""

C = TypeVar("C", TeacherConfig, StudentConfig)


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (N: a GPU's index) or mps"
"""The device settings, in words."""


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else as given (an unknown name is a
    ``ConfigError`` naming the choices)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}: choose {DEVICE_CHOICES}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available: use device=cpu or device=auto")
    return device


def with_absolute_paths(cfg: C) -> C:
    """``cfg`` with its file and folder settings (:data:`~intrakd.config.PATH_KEYS`) made absolute,
    as a run records them (so that ``--resume`` finds them from any working directory)."""
    values = to_dict(cfg)
    for key in PATH_KEYS:
        *sections, name = key.split(".")
        node = values
        for section in sections:
            node = node.get(section, {})
        if node.get(name) is not None:
            node[name] = os.path.abspath(node[name])
    absolute = from_dict(type(cfg), values)
    absolute.validate()
    return absolute


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_config(run_dir: Path, command: str, config: dict[str, Any], comment: str = "") -> None:
    text = yaml.safe_dump({"command": command, **config}, sort_keys=False) + comment
    write_atomic(run_dir / "config.yaml", text.encode())


def load_run_config(cls: type[C], run_dir: str | Path, command: str, path: str | Path | None = None,
                    overrides: list[str] | None = None) -> C:
    """The configuration to resume the run in ``run_dir`` with: its ``config.yaml``, then the YAML
    file at ``path`` and ``overrides`` on top (which may only change :data:`RESUME_MAY_CHANGE`)."""
    stored = _stored_config(Path(run_dir), command)
    return load_config(cls, path, overrides, base=stored)


def _stored_config(run_dir: Path, command: str) -> dict[str, Any]:
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ResumeError(f"{run_dir} holds no run to resume (no config.yaml): start one with --out {run_dir}")
    stored = read_yaml(config_path)
    if not isinstance(stored, dict):
        raise ResumeError(f"{config_path} does not hold a run configuration")
    stored = dict(stored)
    found = stored.pop("command", None)
    if found != command:
        raise ResumeError(f"{run_dir} holds a {found!r} run: resume it with intrakd {found} --resume {run_dir}")
    return upgrade_stored(stored)


def _check_same_settings(cls: type[C], run_dir: Path, stored: dict[str, Any], cfg: C) -> None:
    """Refuse (:class:`ResumeError`) to continue the run with settings ``stored`` with ``cfg``, when
    they differ in more than :data:`RESUME_MAY_CHANGE`."""
    refused = [d for d in config_differences(cls, stored, to_dict(cfg)) if not _may_change(d)]
    if refused:
        raise ResumeError(f"cannot resume {run_dir}: the configuration differs from the run's in "
                          + "; ".join(refused) + ". On resume only " + ", ".join(
                              k + ("*" if k.endswith(".") else "") for k in RESUME_MAY_CHANGE)
                          + " may change; start a new run (another --out) for other settings")


INPUT_KEYS = ("model_input", "teacher_input")
"""The provenance keys of what each model of a run is fed (resolved: the model's own filled in)."""


def data_input(split: Split) -> ModelInput:
    """The data's own input: its statistics at its image side (what a zoo model is fed by default)."""
    mean, std = split.statistics
    return ModelInput(tuple(mean), tuple(std), split.image_shape[-1])


def _inputs_comment(inputs: dict[str, dict[str, Any]]) -> str:
    """The lines of ``config.yaml`` saying what each model was fed (the unset fields resolved)."""
    return "".join(f"# {key} as fed: {json.dumps(value)}\n" for key, value in inputs.items())


def _finished_summary(cls: type[C], cfg: C, out: str | Path, command: str) -> dict[str, Any] | None:
    """The summary of the finished run of ``command`` in ``out`` (None: the run is not finished),
    after checking that ``cfg`` could continue it; says that there is nothing to continue, and
    changes nothing."""
    path = Path(out) / "summary.json"
    if not path.is_file():
        return None
    _check_same_settings(cls, Path(out), _stored_config(Path(out), command), with_absolute_paths(cfg))
    say(f"{out} holds a finished run (its summary.json): nothing to continue, nothing changed")
    return json.loads(path.read_text())


def config_differences(cls: type[C], old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting (dotted key) that differs, defaults filled in on both sides."""
    try:
        old_flat = flatten(to_dict(from_dict(cls, old)))
    except ConfigError as err:
        raise ResumeError(f"the run's configuration cannot be read by this version of intrakd: {err}") from err
    new_flat = flatten(to_dict(from_dict(cls, new)))
    return [f"{key}: {old_flat.get(key)!r} -> {new_flat.get(key)!r}"
            for key in sorted(old_flat.keys() | new_flat.keys()) if old_flat.get(key) != new_flat.get(key)]


def _may_change(difference: str) -> bool:
    return key_in(difference.split(":", 1)[0], RESUME_MAY_CHANGE)


def _reads(cfg: TeacherConfig | StudentConfig) -> dict[str, str | None]:
    """The files a run reads, which its run folder must not replace or hold."""
    teacher = {"the teacher checkpoint": cfg.teacher, "the teacher's outputs": cfg.teacher_outputs} \
        if isinstance(cfg, StudentConfig) else {}
    return {**teacher, "the model's starting weights": cfg.weights, "the dataset": cfg.data.root}


def _read_folders(cfg: TeacherConfig | StudentConfig) -> dict[str, str | None]:
    """The folders a run reads, which its run folder must not be, hold or lie in: the dataset, and
    the checkpoints folder of the teacher's run (a checkpoint elsewhere is guarded as a file)."""
    teacher = Path(cfg.teacher).parent if isinstance(cfg, StudentConfig) and cfg.teacher else None
    return {"the dataset": cfg.data.root,
            "the teacher's checkpoints folder": str(teacher) if teacher and teacher.name == "checkpoints" else None}


def open_run(cls: type[C], cfg: C, out: str | Path, command: str, provenance: dict[str, Any],
             data_own: dict[str, Any] | None = None, *, overwrite: bool = False, resume: bool = False,
             names: list[str] | None = None) -> tuple[Path, dict[str, Any] | None, Path | None, RunFolder | None]:
    """Check, lock and open the run folder: ``(run_dir, checkpoint state or None, checkpoint path or
    None, its locked RunFolder)``; the caller closes the folder (:meth:`RunFolder.close`) when done.

    A fresh run refuses a folder that holds a run (unless ``overwrite``) or whose generated files
    hold one of its inputs. A resumed one loads the newest checkpoint that verifies (naming those
    skipped), refuses a configuration, inputs or class ``names`` that differ from the run's, and only then
    writes anything.
    Both refuse a folder another run is writing (:class:`~intrakd.train.runfolder.RunFolderBusy`).
    ``config.yaml`` says in comments what each model is fed (``provenance``'s inputs); ``data_own``, the
    data's own input, is what a checkpoint written before runs recorded their inputs fed its models.
    """
    run_dir = Path(out)
    if not resume:
        folder = RunFolder.open_new(run_dir, overwrite, _reads(cfg), _read_folders(cfg))
        _write_config(folder.path, command, to_dict(cfg),
                      _inputs_comment({k: provenance[k] for k in INPUT_KEYS if k in provenance}))
        return folder.path, None, None, folder
    if overwrite:
        raise ResumeError("--resume continues a run and --overwrite replaces it: pass only one")
    _stored_config(run_dir, command)  # a run of this command is there, before the folder is locked
    folder = RunFolder.open_existing(run_dir)
    try:
        return (*_open_to_resume(cls, cfg, run_dir, command, provenance, data_own, names), folder)
    except BaseException:
        folder.close()
        raise


def _open_to_resume(cls: type[C], cfg: C, run_dir: Path, command: str, provenance: dict[str, Any],
                    data_own: dict[str, Any] | None = None, names: list[str] | None = None
                    ) -> tuple[Path, dict[str, Any] | None, Path | None]:
    """:func:`open_run` of a run to continue, its folder locked."""
    stored = _stored_config(run_dir, command)
    store = CheckpointStore(run_dir / "checkpoints")
    state, path, skipped = None, None, []
    for candidate, loaded, reason in store.newest_intact():
        if loaded is None:
            skipped.append(reason)
            continue
        state, path = loaded, candidate
        break
    if state is not None:
        check_format(state, path)
        check_class_names(state.get("class_names"), names, f"the run in {run_dir}")
    if state is None and skipped:
        raise CheckpointError(f"no intact checkpoint to resume {run_dir} from: " + "; ".join(skipped)
                              + f". Start again with --overwrite --out {run_dir}")
    _check_same_settings(cls, run_dir, upgrade_stored(state["config"]) if state is not None else stored, cfg)
    if state is not None:
        recorded = {**dict.fromkeys(INPUT_KEYS, data_own), **state["provenance"]}
        changed = [f"{key}: {recorded.get(key)!r} -> {value!r}" for key, value in provenance.items()
                   if recorded.get(key) != value]
        if changed:
            raise ResumeError(f"cannot resume {run_dir}: its inputs changed since it started ({'; '.join(changed)})")
    for reason in skipped:
        print(f"warning: skipped a damaged checkpoint: {reason}", file=sys.stderr)
    store.remove_leftovers()
    _write_config(run_dir, command, to_dict(cfg))
    where = f"from {path}" if path is not None else "from the beginning (no checkpoint was written yet)"
    print(f"resuming {run_dir} {where}", file=sys.stderr)
    return run_dir, state, path


def _open_on_main(cls: type[C], cfg: C, out: str | Path, command: str, provenance: dict[str, Any],
                  data_own: dict[str, Any] | None = None, *, overwrite: bool, resume: bool,
                  names: list[str] | None = None) -> tuple[Path, dict[str, Any] | None, Path | None, RunFolder | None]:
    """:func:`open_run` on rank 0; the other data-parallel ranks then load the checkpoint it chose."""
    opened = distributed.run_on_main(
        lambda: open_run(cls, cfg, out, command, provenance, data_own, overwrite=overwrite, resume=resume,
                         names=names))
    chosen = distributed.gather_objects(None if opened is None else opened[2])[0]
    if opened is not None:
        return opened
    return Path(out), (read_checkpoint(chosen) if chosen is not None else None), chosen, None


def _setup(cfg: TeacherConfig | StudentConfig) -> tuple[torch.device, PerfSettings]:
    """This process's device (joining torchrun's process group, if launched by it) and its applied
    speed settings."""
    device = distributed.setup(cfg.dist, resolve_device(cfg.device))
    perf = resolve_perf(cfg.perf, device, distributed.local_world_size())
    perf.apply()
    return device, perf


def _start(trainer: Trainer, state: dict[str, Any] | None, path: Path | None, folder: RunFolder | None,
           extra_summary: dict[str, Any]) -> dict[str, Any]:
    """Run ``trainer`` to its end, then unlock its folder (``folder``: None on the other ranks).

    A replaced run's files are deleted once the new run keeps an epoch. A new run that stops before
    that is undone (its folder as before it started, the replaced run put back) unless it replaced
    none and kept a checkpoint or was stopped by a signal: then it can be continued."""
    if state is not None:
        trainer.load(state, path)
    try:
        summary = trainer.fit({**extra_summary, "perf": trainer.perf.describe(),
                               "world_size": distributed.world_size()})
    except Exception as err:
        if folder is not None:
            continuable = trainer.state.last_checkpoint is not None or isinstance(err, Interrupted)
            if trainer.state.metrics_lines:
                folder.settle()
            elif folder.new and (folder.previous is not None or not continuable):
                replaced = folder.previous is not None
                folder.abandon()
                if isinstance(err, Interrupted) and replaced:
                    raise Interrupted(err.signum, f"stopped by {signal.Signals(err.signum).name} before the new "
                                                  f"run kept an epoch: {folder.path} holds the run it was to "
                                                  "replace, as before") from err
        raise
    finally:
        if folder is not None:
            folder.close()
    if folder is not None:
        folder.settle()
    return summary


def train_teacher(cfg: TeacherConfig, out: str | Path, overwrite: bool = False, resume: bool = False,
                  label: str | None = None) -> dict[str, Any]:
    """Train a teacher (vanilla when ``cfg.intra.weight == 0``), or continue the one in ``out``
    (``resume``); returns the run summary. ``label`` names the run in its log lines (default
    'vanilla teacher' or 'enriched teacher')."""
    if resume and not overwrite and (done := _finished_summary(TeacherConfig, cfg, out, "train-teacher")) is not None:
        return done
    cfg = with_absolute_paths(cfg)
    device, perf = _setup(cfg)
    train_set, eval_set, split = build_datasets(cfg.data)
    label = label or ("enriched teacher" if cfg.intra.enabled else "vanilla teacher")
    job = RunJob(TeacherConfig, "train-teacher", label, label, {}, lambda model: IntraClassTeacherObjective(
        cfg.intra, train_set.num_classes, model.embedding_dim, cfg.views))
    return _fit(job, cfg, out, device, perf, (train_set, eval_set, split), class_names(cfg.data),
                overwrite=overwrite, resume=resume)


def distill(cfg: StudentConfig, out: str | Path, overwrite: bool = False, resume: bool = False,
            label: str | None = None) -> dict[str, Any]:
    """Distil ``cfg.model`` from the frozen teacher checkpoint ``cfg.teacher`` (or from the store of its
    outputs ``cfg.teacher_outputs``), or continue the run in ``out`` (``resume``); returns the summary.
    ``label`` names the run in its log lines (default 'student')."""
    store = None
    if cfg.teacher_outputs:
        cfg = dataclasses.replace(cfg, teacher_outputs=os.path.abspath(cfg.teacher_outputs))
        store = TeacherStore(cfg.teacher_outputs)
        cfg = dataclasses.replace(cfg, teacher=_store_teacher(cfg, store))
    if not cfg.teacher:
        raise ConfigError("no teacher given: pass --teacher CHECKPOINT (or teacher=PATH, or teacher_outputs=STORE)")
    if resume and not overwrite and (done := _finished_summary(StudentConfig, cfg, out, "distill")) is not None:
        return done
    cfg = with_absolute_paths(cfg)
    device, perf = _setup(cfg)
    train_set, eval_set, split = build_datasets(cfg.data)
    label = label or "student"
    names = class_names(cfg.data)
    if store is None:
        teacher, teacher_state = classifier_from_checkpoint(cfg.teacher, cfg.teacher_model, train_set.num_classes,
                                                            train_set.image_shape, data_input(train_set),
                                                            dataclasses.asdict(cfg.teacher_input), names)
        _note_student_teacher(cfg.teacher, teacher_state)
        teacher_input = teacher.model_input
        teacher = perf.prepare_model(teacher.to(device).eval().requires_grad_(False))
        provenance, feed = {"teacher_sha256": file_sha256(Path(cfg.teacher))}, None
    else:
        teacher = StoredTeacher()
        teacher_input = _check_store(cfg, store, train_set, perf)
        provenance = {"teacher_sha256": store.teacher["sha256"], "teacher_outputs_sha256": store.sha256}

        def feed(live: Batches) -> Batches:
            return teacher.feed(StoredBatches(live, store))

    provenance["teacher_input"] = teacher_input.to_dict()

    job = RunJob(StudentConfig, "distill", label, f"{label} ({cfg.distill.method} from {cfg.teacher})", provenance,
                 lambda model: create_distiller(cfg.distill, model, teacher, train_set), teacher, feed,
                 f"; teacher {teacher_input.describe()}")
    return _fit(job, cfg, out, device, perf, (train_set, eval_set, split), names, overwrite=overwrite, resume=resume)


def _note_student_teacher(path: str, state: dict[str, Any]) -> None:
    """Say so when the teacher checkpoint is itself a student (a teacher assistant, as in TAKD, is a
    deliberate choice; a student picked by mistake is not)."""
    if state.get("kind") == "student":
        config = state.get("config") or {}
        source = f" (distilled from {config['teacher']})" if config.get("teacher") else ""
        say(f"note: the teacher {path} is a student checkpoint{source}: this run distils from a student; if you "
            "meant its teacher, pass --teacher with that teacher's checkpoint")


def _store_teacher(cfg: StudentConfig, store: TeacherStore) -> str:
    """The teacher of a run reading ``store``: the one it names, or ``cfg.teacher`` if that is the same
    checkpoint (by content); another teacher is refused."""
    named = store.teacher
    if cfg.teacher_model is not None and cfg.teacher_model != named["model"]:
        raise StoreMismatch(f"teacher_model={cfg.teacher_model} but the store {store.folder} holds the outputs of a "
                            f"{named['model']!r}: drop teacher_model or make a store of that teacher")
    if not cfg.teacher or os.path.abspath(cfg.teacher) == named["path"]:
        return named["path"]
    if file_sha256(Path(cfg.teacher)) != named["sha256"]:
        raise StoreMismatch(f"the store {store.folder} holds the outputs of another teacher ({named['path']}, "
                            f"sha256 {named['sha256'][:12]}...) than --teacher {cfg.teacher}: drop --teacher to "
                            "use the store's, or make a store of this teacher")
    return cfg.teacher


def _view_batches(cfg: StudentConfig, train_set: Split, device: torch.device) -> TensorBatches:
    """The batches a student run of ``cfg`` draws, checked to be storable: a method that reads only the
    teacher's logits, on a dataset held as tensors."""
    method = distiller_class(cfg.distill.method)
    if method.kind != "logits":
        logit_methods = [m for m in list_distillers() if distiller_class(m).kind == "logits"]
        raise ConfigError(f"distill.method={cfg.distill.method} reads the teacher's {method.kind}, and a store holds "
                         f"only the teacher's logits: distil it from the teacher itself, or choose a method that "
                         f"reads logits only ({', '.join(logit_methods)})")
    batches = train_set.train_batches(cfg.data.batch_size, method.num_views, cfg.seed, device, method.strong_views)
    if not isinstance(batches, TensorBatches):
        raise ConfigError(
            f"a store of the teacher's outputs needs the training images held as tensors: {cfg.data.dataset} "
                         "is decoded from files with augmentation in worker processes, which a store does not replay; "
                         "set data.in_memory=true (with data.augment=pad_crop)")
    return batches


def _check_store(cfg: StudentConfig, store: TeacherStore, train_set: Split, perf: PerfSettings) -> ModelInput:
    """Refuse (:class:`StoreMismatch`, naming every difference) a store that does not hold what this
    student run would compute: other data, augmentation, seed, views, the teacher's input, precision or
    too few epochs. Returns the teacher's input: the store's, where ``teacher_input`` sets nothing."""
    batches = _view_batches(cfg, train_set, torch.device("cpu"))
    given = {k: v for k, v in dataclasses.asdict(cfg.teacher_input).items() if v is not None}
    stored_input = store.manifest["teacher_input"]
    wanted = {**view_settings(cfg.data, batches.data, batches), "teacher_input": {**stored_input, **given}}
    problems = store.mismatches(wanted, cfg.optim.epochs, perf.describe()["precision"])
    if problems:
        raise StoreMismatch(f"cannot distil from the store {store.folder}: " + "; ".join(problems))
    if store.manifest["device"] != perf.device.type:
        say(f"note: the store's views were drawn on {store.manifest['device']}; this run on {perf.device.type} replays "
            "them (a run here without the store would draw others, from the same distribution)")
    return ModelInput.from_dict(stored_input)


def teacher_outputs(cfg: StudentConfig, out: str | Path, epochs: int | None = None,
                    top_k: int | None = None) -> dict[str, Any]:
    """Run the teacher ``cfg.teacher`` once over the views that a student run of ``cfg`` draws in its
    first ``epochs`` epochs (default ``cfg.optim.epochs``) and store them as their augmentation draws,
    with the teacher's logits: every class in the dtype the teacher computes them in, or (``top_k``)
    the top K in float16 and the rest's log-mass. Finished epochs of an earlier, interrupted call (or of
    a shorter store) with the same settings are kept. Returns what was written."""
    if not cfg.teacher:
        raise ConfigError("no teacher given: pass --teacher CHECKPOINT")
    if cfg.teacher_outputs:
        raise ConfigError("teacher_outputs names a store to read; this command writes one: give it as --out")
    if cfg.data.mixes:
        raise ConfigError("data.mixup / data.cutmix: a store holds the teacher's logits of unmixed views, and a run "
                          "that mixes its batches must run the teacher on the mixed images: drop both settings")
    epochs = cfg.optim.epochs if epochs is None else epochs
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    teacher_path = os.path.abspath(cfg.teacher)
    check_replaces_no_input(out, _reads(cfg), _read_folders(cfg))
    device, perf = _setup(cfg)
    train_set, _, _ = build_datasets(cfg.data)
    if top_k is not None and not 1 <= top_k < train_set.num_classes:
        raise ConfigError(f"--top-k must lie in 1..{train_set.num_classes - 1} (the data has {train_set.num_classes} "
                         f"classes; leave it out to store every class), got {top_k}")
    batches = _view_batches(cfg, train_set, device)
    teacher, state = classifier_from_checkpoint(teacher_path, cfg.teacher_model, train_set.num_classes,
                                                train_set.image_shape, data_input(train_set),
                                                dataclasses.asdict(cfg.teacher_input), class_names(cfg.data))
    teacher_input = teacher.model_input
    teacher = perf.prepare_model(teacher.to(device).eval().requires_grad_(False))
    with torch.inference_mode(), perf.autocast():
        dtype = teacher(torch.zeros(1, *train_set.image_shape, device=device, dtype=torch.uint8)).logits.dtype
    settings = {
        "teacher": {"path": teacher_path, "sha256": file_sha256(Path(teacher_path)),
                    "model": state.get("model_name") or cfg.teacher_model},
        **view_settings(cfg.data, train_set, batches),
        "teacher_input": teacher_input.to_dict(),
        "precision": perf.describe()["precision"], "device": device.type,
        "logits": {"dtype": LOGIT_DTYPES[dtype][0], "top_k": top_k},
    }
    writer = StoreWriter(out, settings)
    distributed.run_on_main(writer.start)
    todo = [epoch for epoch in range(epochs) if not writer.finished(epoch, batches.rank)]
    kept = f", {epochs - len(todo)} kept from before" if len(todo) < epochs else ""
    say(f"intrakd teacher-outputs: {settings['teacher']['model']} ({teacher_path}) -> {out}")
    say(f"  views   {cfg.data.dataset}: {len(train_set)} training images, {len(batches)} batches of "
        f"{cfg.data.batch_size} x {batches.views} views, seed {cfg.seed}: {len(todo)} of {epochs} epochs to "
        f"write{kept}")
    say(f"  input   teacher {teacher_input.describe()}")
    say(f"  logits  {settings['logits']['dtype'] if top_k is None else f'top {top_k} in float16'}, "
        f"{writer.dtype.itemsize} bytes an image; device {device}, precision {settings['precision']}")
    progress = Progress(len(todo) * len(batches), "teacher outputs")
    started = time.perf_counter()

    def teacher_logits(view: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), perf.autocast():  # as a distiller runs the teacher (Distiller.outputs)
            return teacher(view).logits

    write_epochs(writer, batches, teacher_logits, todo, progress)
    progress.close()
    seconds = time.perf_counter() - started
    distributed.gather_objects(None)  # every rank's shards are written
    distributed.run_on_main(lambda: writer.finish(epochs))
    epoch_bytes = writer.rows * writer.dtype.itemsize * batches.world_size
    images = len(todo) * len(batches) * cfg.data.batch_size
    return {"store": str(out), "teacher": teacher_path, "epochs": epochs, "epochs_written": len(todo),
            "bytes_per_epoch": epoch_bytes, "bytes": epoch_bytes * epochs, "seconds": round(seconds, 3),
            "images_per_second": round(images / seconds, 1) if images else None}


@dataclass(frozen=True)
class RunJob:
    """What sets a teacher run and a student run apart, for :func:`_fit`."""

    cls: type[TeacherConfig | StudentConfig]
    command: str
    label: str
    """The run's name in its log lines."""
    title: str
    """What the introduction calls the run."""
    provenance: dict[str, Any]
    """Facts about its inputs a resumed run must find unchanged (besides the data's size)."""
    make_objective: Callable[[nn.Module], nn.Module]
    teacher: nn.Module | None = None
    feed: Callable[[Batches], Batches] | None = None
    """Passes the run's batches through, when given (a student replaying a store of teacher outputs)."""
    inputs: str = ""
    """What the introduction says of the inputs besides the model's (the teacher's)."""


def _fit(job: RunJob, cfg: TeacherConfig | StudentConfig, out: str | Path, device: torch.device,
         perf: PerfSettings, data: tuple[Split, Split, str], names: list[str], *, overwrite: bool,
         resume: bool) -> dict[str, Any]:
    """What a teacher run and a student run share: the seeded model and objective, the batches, the
    run folder, the introduction and the engine, run to its end. ``names``: the data's class names."""
    train_set, eval_set, split = data
    command, teacher = job.command, job.teacher
    provenance = {"train_images": len(train_set), "eval_images": len(eval_set), **job.provenance}
    start: dict[str, Any] = {}
    if cfg.weights is not None:
        start["weights"] = cfg.weights
    if cfg.pretrained:
        start["pretrained"] = True
    seed_everything(cfg.seed)
    own = data_input(train_set)
    side = cfg.model_input.size or own.size
    model = create_model(cfg.model, num_classes=train_set.num_classes,
                         image_shape=(train_set.image_shape[0], side, side), **start)
    model_input = resolve_input(model, own, dataclasses.asdict(cfg.model_input))
    feed_with(model, model_input)
    provenance["model_input"] = model_input.to_dict()
    inputs = {key: provenance[key] for key in INPUT_KEYS if key in provenance}
    if cfg.weights is not None:
        provenance["weights_sha256"] = file_sha256(Path(cfg.weights))
    model = perf.prepare_model(model.to(device))
    check_reads_images(model, train_set.image_shape, f"model {cfg.model!r}", MODEL_FOR_THE_IMAGES)
    objective = job.make_objective(model).to(device)
    if cfg.train.label_smoothing and not hasattr(objective, "label_smoothing"):
        raise ConfigError(f"train.label_smoothing: the objective {type(objective).__name__} has no cross-entropy "
                          "term that takes it (a label_smoothing attribute): drop the setting")
    objective.label_smoothing = cfg.train.label_smoothing  # its cross-entropy on the true labels
    train_batches = train_set.train_batches(cfg.data.batch_size, objective.num_views, cfg.seed, device,
                                             objective.strong_views)
    if job.feed is not None:
        train_batches = job.feed(train_batches)
    if cfg.data.mixes:  # after augmentation, before any model: the teacher sees the student's mixed images
        train_batches = MixedBatches(train_batches, cfg.data.mixup, cfg.data.cutmix, train_set.num_classes, cfg.seed)
    run_dir, state, path, folder = _open_on_main(job.cls, cfg, out, command, provenance, own.to_dict(),
                                                 overwrite=overwrite, resume=resume, names=names)
    try:
        resumed = (str(path) if path is not None else "its beginning") if resume else None
        for line in run_intro(RunPlan(
            command, job.title, str(run_dir), resumed, cfg.data.dataset, len(train_set), train_set.num_classes,
            split, len(eval_set), cfg.model, steps_per_epoch=len(train_batches), epochs=cfg.optim.epochs,
            batch_size=cfg.data.batch_size, device=str(perf.device), precision=perf.describe()["precision"],
            processes=distributed.world_size(),
            init_epochs=getattr(objective, "init_epochs", 0),  # an objective's pre-training stage (train/stages.py)
            unreadable=len(getattr(train_set, "bad", {})) if getattr(train_set, "bad_images", "") == "skip" else 0,
            inputs=f"model {model_input.describe()}{job.inputs}",
            schedule=describe_schedule(cfg.optim), mixing=describe_mixing(cfg.data.mixup, cfg.data.cutmix),
        )):
            say(line)
        kind = "teacher" if command == RUN_COMMANDS["teacher"] else "student"
        trainer = Trainer(
            model=model, objective=objective, train_batches=train_batches, eval_set=eval_set, optim=cfg.optim,
            run_dir=run_dir, info=RunInfo(kind, cfg.model, train_set.num_classes, to_dict(cfg), split, provenance,
                                          job.label, names),
            teacher=teacher, eval_batch_size=cfg.data.eval_batch_size, checkpoint=cfg.checkpoint, train=cfg.train,
            perf=perf, sync_batchnorm=cfg.dist.sync_batchnorm,
        )
    except BaseException:
        if folder is not None:
            folder.abandon()
        raise
    return _start(trainer, state, path, folder,
                  {**({"teacher": str(cfg.teacher)} if teacher is not None else {}), "inputs": inputs})
