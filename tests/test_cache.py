"""The per-class feature cache against a slow per-class list model."""

import pytest
import torch
from fakes import cache_memory

from intrakd.losses import FeatureCache


class SlowCache:
    """Per-class Python lists: append, drop the oldest beyond capacity."""

    def __init__(self, classes, capacity, max_age=None):
        self.entries = {c: [] for c in range(classes)}
        self.capacity, self.max_age, self.step = capacity, max_age, 0

    def write(self, feats, labels, mask):
        for f, y, m in zip(feats, labels.tolist(), mask.tolist()):
            if m:
                self.entries[y].append((f.clone(), self.step))
                self.entries[y] = self.entries[y][-self.capacity:]
        self.step += 1

    def clear(self, classes):
        for c in classes:
            self.entries[c] = []

    def usable(self, c):
        return [f for f, t in self.entries[c] if self.max_age is None or self.step - t <= self.max_age]


def as_sets(cache: FeatureCache):
    feats, labels = cache_memory(cache)
    out = {}
    for c in range(cache.num_classes):
        rows = feats[labels == c]
        out[c] = sorted(tuple(r.tolist()) for r in rows)
    return out


def filled(cache: FeatureCache) -> list[int]:
    """Slots holding an entry, per class (whatever its age)."""
    return (cache.written_at >= 0).sum(dim=1).tolist()


def check_equal(cache, slow):
    got = as_sets(cache)
    for c in range(cache.num_classes):
        assert got[c] == sorted(tuple(f.tolist()) for f in slow.usable(c)), f"class {c}"


@pytest.mark.parametrize("capacity", [1, 3, 8])
@pytest.mark.parametrize("max_age", [None, 0, 2])
def test_random_writes_match_slow_model(capacity, max_age):
    g = torch.Generator().manual_seed(capacity * 10 + (max_age or 0))
    cache, slow = FeatureCache(4, capacity, 3, max_age=max_age), SlowCache(4, capacity, max_age)
    for step in range(12):
        n = int(torch.randint(1, 10, (1,), generator=g))
        feats = torch.randn(n, 3, generator=g)
        labels = torch.randint(0, 4, (n,), generator=g)
        mask = torch.rand(n, generator=g) > 0.4
        cache.write(feats, labels, mask)
        slow.write(feats, labels, mask)
        check_equal(cache, slow)
        assert filled(cache) == [min(cache.capacity, len(slow.entries[c])) for c in range(4)]


def test_empty_cache_has_no_usable_entries():
    cache = FeatureCache(3, 4, 2)
    _, labels = cache_memory(cache)
    assert (labels == -1).all()
    assert cache.fill().item() == 0.0


def test_wrap_around_keeps_newest_in_order():
    cache = FeatureCache(1, 3, 1)
    for v in range(5):  # one sample per step: 0..4; keep 2, 3, 4
        cache.write(torch.tensor([[float(v)]]), torch.tensor([0]))
    assert sorted(cache.features[0, :, 0].tolist()) == [2.0, 3.0, 4.0]
    assert cache.pointer.item() == 5 % 3 and filled(cache) == [3]
    # more arrivals at once than capacity: the last K of them are kept
    cache.write(torch.arange(10.0, 17.0)[:, None], torch.zeros(7, dtype=torch.long))
    assert sorted(cache.features[0, :, 0].tolist()) == [14.0, 15.0, 16.0]


def test_max_age_hides_stale_entries():
    # age = steps since the write; an entry written in the previous step has age 1
    cache = FeatureCache(2, 4, 1, max_age=1)
    cache.write(torch.tensor([[1.0]]), torch.tensor([0]))  # written at step 0
    _, labels = cache_memory(cache)
    assert labels[labels >= 0].tolist() == [0]  # age 1
    cache.write(torch.tensor([[2.0]]), torch.tensor([1]))  # written at step 1
    _, labels = cache_memory(cache)
    assert labels[labels >= 0].tolist() == [1]  # class 0's entry has age 2 > 1
    cache.write(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long))
    _, labels = cache_memory(cache)
    assert labels[labels >= 0].tolist() == []


def test_clear_after_use_empties_only_chosen_classes():
    cache = FeatureCache(3, 2, 1)
    cache.write(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([0, 1, 2]))
    cache.clear(torch.tensor([True, False, True]))
    _, labels = cache_memory(cache)
    assert labels[labels >= 0].tolist() == [1]
    assert filled(cache) == [0, 1, 0]
    cache.write(torch.tensor([[5.0]]), torch.tensor([0]))
    feats, labels = cache_memory(cache)
    assert feats[labels == 0].flatten().tolist() == [5.0]


def test_state_dict_round_trip_restores_everything():
    cache = FeatureCache(3, 4, 2, max_age=5)
    cache.write(torch.randn(9, 2), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 0]))
    restored = FeatureCache(3, 4, 2, max_age=5)
    restored.load_state_dict(cache.state_dict())
    for name, buf in cache.state_dict().items():
        assert torch.equal(buf, restored.state_dict()[name]), name
    assert set(cache.state_dict()) == {"features", "ids", "pointer", "written_at", "step"}


def test_cache_is_fixed_size_c_times_k():
    cache = FeatureCache(100, 64, 256)
    feats, labels = cache_memory(cache)
    assert feats.shape == (6400, 256) and labels.shape == (6400,)
    assert cache.features.numel() * 4 == 100 * 64 * 256 * 4  # 6.6 MB in float32


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        FeatureCache(10, 0, 4)
    with pytest.raises(ValueError, match="max_age"):
        FeatureCache(10, 4, 4, max_age=-1)


def test_ids_follow_their_entries_through_wrap_around():
    """Each entry keeps the sample index it was written with, as a slow list model does, over many
    wrap-arounds of the ring buffers and with more arrivals of one class than the capacity."""
    g = torch.Generator().manual_seed(11)
    cache, slow = FeatureCache(3, 4, 1), SlowCache(3, 4)
    next_id = 0
    for _ in range(15):
        n = int(torch.randint(1, 9, (1,), generator=g))
        ids = torch.arange(next_id, next_id + n)
        next_id += n
        labels = torch.randint(0, 3, (n,), generator=g)
        mask = torch.rand(n, generator=g) > 0.3
        cache.write(ids[:, None].float(), labels, mask, ids)  # the feature is the id: entries can be matched
        slow.write(ids[:, None].float(), labels, mask)
        valid = cache.valid()
        for c in range(3):
            got = sorted(cache.ids[c][valid[c]].tolist())
            assert got == sorted(int(f) for f in slow.usable(c))
            assert torch.equal(cache.ids[c][valid[c]], cache.features[c][valid[c]][:, 0].long())


def test_state_dict_without_ids_loads_with_ids_unknown():
    cache = FeatureCache(2, 3, 2)
    cache.write(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), ids=torch.tensor([5, 6, 7, 8]))
    old = {k: v for k, v in cache.state_dict().items() if k != "ids"}  # a checkpoint from before ids
    restored = FeatureCache(2, 3, 2)
    restored.load_state_dict(old)
    assert torch.equal(restored.features, cache.features) and (restored.ids == -1).all()


def test_state_dict_with_the_old_fill_counts_loads():
    """Checkpoints of older versions hold a ``count [C]`` buffer (never read): it is dropped on load."""
    cache = FeatureCache(2, 3, 2)
    cache.write(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), ids=torch.tensor([5, 6, 7, 8]))
    old = {**cache.state_dict(), "count": torch.tensor([2, 2])}
    restored = FeatureCache(2, 3, 2)
    restored.load_state_dict(old)  # strict: an unexpected key would raise
    for name, buf in cache.state_dict().items():
        assert torch.equal(buf, restored.state_dict()[name]), name
    assert "count" in old  # the caller's dict is left as it was
    parent = torch.nn.ModuleDict({"cache": FeatureCache(2, 3, 2)})  # as inside an objective's checkpoint
    parent.load_state_dict({f"cache.{k}": v for k, v in old.items()})
    assert torch.equal(parent["cache"].features, cache.features)
