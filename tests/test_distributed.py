"""Data-parallel training: sharded batches, the single-process identities, and 2 gloo processes on
the CPU that must train exactly like one process with the whole batch.

The 2-process runs use a model without batch norm: PyTorch's SyncBatchNorm does not run on the CPU,
and without it batch-norm statistics over B/2 images differ from those over B by design.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fakes import TinyNet
from torch import Tensor, nn

from intrakd import distributed
from intrakd.config import DistillConfig, IntraConfig, OptimConfig
from intrakd.data.augment import Augmentation
from intrakd.data.tensor_data import Batch, TensorBatches, TensorDataset
from intrakd.models import feed_with
from intrakd.objectives import IntraClassTeacherObjective, TrainSetInfo, create_distiller
from intrakd.objectives.teacher import PeerBatch
from intrakd.runs import data_input
from intrakd.train.loop import RunInfo, Trainer

GLOBAL_BATCH = 16
EPOCHS = 2  # 4 steps each


def tiny_dataset(augment: bool = False) -> TensorDataset:
    """64 random 1 x 8 x 8 images of 4 classes; without ``augment`` the views are deterministic."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(64) % 4
    return TensorDataset(images, labels, 4, Augmentation((0.5,), (0.25,), padding=1 if augment else 0, flip=augment))


class Recorder(nn.Module):
    """Wraps an objective and keeps the summed loss of every step."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.losses = inner, []

    def forward(self, model: nn.Module, batch: Batch, teacher: nn.Module | None = None):
        result = self.inner(model, batch, teacher)
        self.losses.append(sum(v.detach() for v in result.losses.values()))
        return result


SCENARIOS = {
    "teacher-gate-cache": IntraConfig(weight=0.5, margin="logit", delta=0.0, cache_size=4),
    "teacher-clear-head": IntraConfig(weight=0.5, delta=-1, cache_size=3, clear_after_use=True, head="linear",
                                      head_dim=8),
    "teacher-auto-lambda": IntraConfig(weight="auto", margin="logit", delta=0.0, cache_size=4, auto_ratio=0.5),
    "student-kd": None,
}


def train(scenario: str, tmp: Path) -> dict:
    """Train ``scenario`` for ``EPOCHS`` epochs with the real Trainer; in a process group each rank
    runs its shard. Returns per-step losses, epoch metrics, final weights and the objective state."""
    torch.manual_seed(0)
    model = TinyNet()
    intra = SCENARIOS[scenario]
    teacher = None
    if intra is None:
        teacher = TinyNet(width=4).eval().requires_grad_(False)
        info = TrainSetInfo(4, torch.zeros(0, dtype=torch.long), (1, 8, 8))
        objective = create_distiller(DistillConfig.recipe("kd"), model, teacher, info)
    else:
        objective = IntraClassTeacherObjective(intra, 4, model.embedding_dim, 2)
    recorder = Recorder(objective)
    data = tiny_dataset()
    for fed in (model, teacher):  # the data's uint8 views, normalised as a run feeds zoo models
        if fed is not None:
            feed_with(fed, data_input(data))
    trainer = Trainer(
        model=model, objective=recorder, train_batches=data.train_batches(GLOBAL_BATCH, 1 if intra is None else 2,
                                                                          0, torch.device("cpu")),
        eval_set=data, optim=OptimConfig(epochs=EPOCHS, lr=0.1), run_dir=tmp,
        info=RunInfo("teacher", "tiny", 4, {}, "test"), teacher=teacher,
    )
    trainer.fit()
    metrics = [json.loads(line) for line in trainer.state.metrics_lines]
    return {"losses": torch.stack(recorder.losses), "metrics": metrics, "model": model.state_dict(),
            "objective": objective.state_dict()}


def _worker(rank: int, world_size: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results = {name: train(name, Path(tmp)) for name in SCENARIOS}
        try:
            distributed.run_on_main(lambda: (_ for _ in ()).throw(FileExistsError("run folder taken")))
        except (FileExistsError, ValueError) as err:
            results["run_on_main"] = f"{type(err).__name__}: {err}"
        results["run_on_main_value"] = distributed.run_on_main(lambda: "made")
        torch.save(results, Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[dict, dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp)), nprocs=2, join=True)
    return torch.load(tmp / "rank0.pt"), torch.load(tmp / "rank1.pt")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("single")
    return {name: train(name, tmp) for name in SCENARIOS}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_two_half_batches_train_like_one_whole_batch(two_ranks, one_process, scenario):
    rank0, rank1 = two_ranks[0][scenario], two_ranks[1][scenario]
    single = one_process[scenario]
    assert len(single["losses"]) == EPOCHS * 4
    # each rank's loss is its share of the global one: their mean is the whole batch's loss
    torch.testing.assert_close((rank0["losses"] + rank1["losses"]) / 2, single["losses"], rtol=1e-5, atol=1e-5)
    for r in (rank0, rank1):
        for key, value in single["model"].items():
            torch.testing.assert_close(r["model"][key], value, rtol=1e-4, atol=1e-5)
        for epoch in range(EPOCHS):  # metrics reduced over ranks equal the single process's
            for key in ("loss", "ce", "intra", "kd", "anchors_used", "pass_rate", "lambda", "train_acc"):
                if key in single["metrics"][epoch]:
                    assert r["metrics"][epoch][key] == pytest.approx(single["metrics"][epoch][key], rel=1e-4, abs=1e-5)
    if scenario.startswith("teacher"):
        assert single["metrics"][-1]["anchors_used"] > 0  # the intra-class term was active


def test_ranks_agree_on_auto_lambda_and_equal_one_process(two_ranks, one_process):
    rank0, rank1 = (r["teacher-auto-lambda"] for r in two_ranks)
    single = one_process["teacher-auto-lambda"]
    assert all(m["lambda"] > 0 for m in single["metrics"])
    for key in ("balance.average", "balance.updates"):
        assert torch.equal(rank0["objective"][key], rank1["objective"][key]), key
        torch.testing.assert_close(rank0["objective"][key], single["objective"][key], rtol=1e-4, atol=0)
    assert rank0["metrics"][-1]["lambda"] == rank1["metrics"][-1]["lambda"]


@pytest.mark.parametrize("scenario", ["teacher-gate-cache", "teacher-clear-head"])
def test_feature_caches_are_identical_on_every_rank_and_equal_to_one_process(two_ranks, one_process, scenario):
    rank0, rank1 = two_ranks[0][scenario]["objective"], two_ranks[1][scenario]["objective"]
    single = one_process[scenario]["objective"]
    cache_keys = [k for k in single if k.startswith("cache.")]
    assert cache_keys
    for key in cache_keys:
        assert torch.equal(rank0[key], rank1[key]), key
        if single[key].is_floating_point():
            torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(rank0[key], single[key]), key
    assert int(rank0["cache.step"]) == EPOCHS * 4
    assert int((rank0["cache.written_at"] >= 0).sum()) > 0  # the gate let samples into the cache
    written = rank0["cache.written_at"] >= 0
    assert (rank0["cache.ids"][written] >= 0).all()  # every entry knows its image, on every rank


def test_rank_zero_failure_reaches_every_rank(two_ranks):
    assert two_ranks[0]["run_on_main"] == "FileExistsError: run folder taken"
    assert two_ranks[1]["run_on_main"] == "ConfigError: rank 0 failed: FileExistsError: run folder taken"
    assert (two_ranks[0]["run_on_main_value"], two_ranks[1]["run_on_main_value"]) == ("made", None)


def test_shards_partition_each_global_batch_with_per_rank_augmentation():
    data = tiny_dataset(augment=True)
    whole = TensorBatches(data, GLOBAL_BATCH, 2, seed=5)
    shards = [TensorBatches(data, GLOBAL_BATCH, 2, seed=5, rank=r, world_size=2) for r in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 4
    for batches in [whole, *shards]:
        batches.set_epoch(1)
    for full, part0, part1 in zip(whole, *shards):
        assert torch.equal(torch.cat([part0.labels, part1.labels]), full.labels)
        assert part0.labels.shape[0] == part1.labels.shape[0] == GLOBAL_BATCH // 2

    # identical images: the views differ only by their augmentation, which each rank draws from its own
    # seed, reproducibly, and anew each epoch
    same = TensorDataset(data.images[:1].expand(64, -1, -1, -1).contiguous(), data.labels, 4, data.augmentation)

    def first_views(rank: int, epoch: int) -> Tensor:
        batches = TensorBatches(same, GLOBAL_BATCH, 2, seed=5, rank=rank, world_size=2)
        batches.set_epoch(epoch)
        return torch.cat(next(iter(batches)).views)

    assert torch.equal(first_views(1, 0), first_views(1, 0))
    assert not torch.equal(first_views(0, 0), first_views(1, 0))
    assert not torch.equal(first_views(1, 0), first_views(1, 1))
    single = TensorBatches(same, GLOBAL_BATCH // 2, 2, seed=5)  # rank 0 uses the single-process stream
    assert torch.equal(torch.cat(next(iter(single)).views), first_views(0, 0))


def test_batch_size_must_divide_among_ranks():
    with pytest.raises(ValueError, match=r"data.batch_size=16 \(the global batch\) is not divisible by the 3"):
        TensorBatches(tiny_dataset(), GLOBAL_BATCH, 1, seed=0, rank=0, world_size=3)


def test_helpers_are_identities_in_one_process():
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert not distributed.is_distributed()
    x = torch.randn(3, 2)
    assert distributed.gather_rows(x) is x and distributed.sum_across_ranks(x) is x
    values = {"a": torch.tensor(1.5)}
    assert distributed.mean_across_ranks(values) is values
    model = TinyNet()
    assert distributed.wrap_model(model, sync_batchnorm=True) is model
    peers = PeerBatch(x, x, torch.tensor([0, 1, 0]), torch.tensor([True, False, True]))
    assert peers.others is None
    z, y, ids, gate = peers.rows
    assert torch.equal(z, x) and not z.requires_grad
    assert y.tolist() == [0, 1, 0] and gate.tolist() == [True, False, True]
    assert ids.tolist() == [-1, -1, -1]
    assert distributed.gather_tensors(x) is x
    assert distributed.run_on_main(lambda: 7) == 7


@pytest.mark.slow
def test_torchrun_launch_trains_a_teacher_and_a_student_with_two_processes(tmp_path):
    """The CLI under ``torchrun --nproc_per_node 2`` with gloo: one run folder each, written by rank 0 (the
    student's batches mixed, each rank its own share)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "intrakd"]
    common = ["data.dataset=digits", "optim.epochs=1", "device=cpu"]
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    commands = [
        ["train-teacher", "--out", str(teacher), "model=digits_cnn_small", *common],
        ["distill", "--teacher", str(teacher / "checkpoints" / "last.pt"), "--out", str(student),
         "model=digits_cnn_small", "data.mixup=0.2", "data.cutmix=1.0", *common],
    ]
    for command, out in zip(commands, (teacher, student)):
        done = subprocess.run([*launch[:3], "--master_port", str(_free_port()), *launch[3:], *command], env=env,
                              check=False,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count('"world_size": 2') == 1  # printed once, by rank 0
        written = sorted(p.name for p in out.iterdir() if p.name != "tensorboard")  # (when installed)
        assert written == ["checkpoints", "config.yaml", "metrics.jsonl", "summary.json"]
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
