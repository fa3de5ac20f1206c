"""The intra-class contrastive loss, the margin and kd_loss against slow, obviously-correct loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from intrakd.losses import Memory, classification_margin, intra_class_contrastive_loss, kd_loss


def fast_intra_loss(anchors, positives, labels, memory=None, memory_labels=None, memory_ids=None, **options):
    """The loss under test, given the slow loop's flat-memory arguments as one :class:`Memory` record."""
    records = [] if memory is None else [Memory.of(memory, memory_labels, memory_ids)]
    return intra_class_contrastive_loss(anchors, positives, labels, memory=records, **options)


def slow_intra_loss(anchors, positives, labels, memory=None, memory_labels=None, anchor_mask=None,
                    temperature=0.1, normalize=True, symmetric=False, min_negatives=1, anchor_ids=None,
                    memory_ids=None):
    """METHOD.md's definition, one anchor at a time, in float64. A memory row whose id is the
    anchor's (both known, >= 0) is an older embedding of the anchor's own image: not a negative."""
    a_all, p_all = anchors.double(), positives.double()
    mem = None if memory is None else memory.double()
    if normalize:
        a_all, p_all = F.normalize(a_all, dim=1), F.normalize(p_all, dim=1)
        mem = None if mem is None else F.normalize(mem, dim=1)
    batch = a_all.shape[0]
    anchor_list = [(a_all[i], p_all[i], i) for i in range(batch)]
    if symmetric:
        anchor_list += [(p_all[i], a_all[i], i) for i in range(batch)]
    losses = []
    for k, (a, p, i) in enumerate(anchor_list):
        if anchor_mask is not None and not bool(anchor_mask[k if len(anchor_mask) > batch else i]):
            continue
        negatives = []
        for j in range(batch):
            if j != i and labels[j] == labels[i]:
                negatives += [a_all[j], p_all[j]]
        if mem is not None:
            own = int(anchor_ids[i]) if anchor_ids is not None else -1
            negatives += [mem[m] for m in range(mem.shape[0]) if memory_labels[m] == labels[i]
                          and not (own >= 0 and memory_ids is not None and int(memory_ids[m]) == own)]
        if len(negatives) < max(1, min_negatives):
            continue
        total = sum(math.exp((float(a @ n) - float(a @ p)) / temperature) for n in negatives)
        losses.append(math.log1p(total))
    return sum(losses) / len(losses) if losses else 0.0


def random_case(seed, batch=12, dim=6, classes=3, memory=10, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(batch, dim, generator=g, dtype=dtype)
    positives = anchors + 0.3 * torch.randn(batch, dim, generator=g, dtype=dtype)
    labels = torch.randint(0, classes, (batch,), generator=g)
    mem = torch.randn(memory, dim, generator=g, dtype=dtype)
    mem_labels = torch.randint(-1, classes, (memory,), generator=g)
    mask = torch.rand(batch, generator=g) > 0.3
    return anchors, positives, labels, mem, mem_labels, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("use_memory", [False, True])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
def test_intra_loss_matches_slow_loop(dtype, symmetric, use_memory, temperature):
    for seed in range(4):
        a, p, y, mem, mem_y, mask = random_case(seed, dtype=dtype)
        kwargs = {"anchor_mask": mask, "temperature": temperature, "symmetric": symmetric}
        if use_memory:
            kwargs.update(memory=mem, memory_labels=mem_y)
        got = fast_intra_loss(a, p, y, **kwargs)
        want = slow_intra_loss(a, p, y, **kwargs)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_unnormalized_seed_form_matches_slow_loop():
    a, p, y, mem, mem_y, _ = random_case(7)
    got = fast_intra_loss(a, p, y, memory=mem, memory_labels=mem_y, temperature=1.0, normalize=False)
    want = slow_intra_loss(a, p, y, memory=mem, memory_labels=mem_y, temperature=1.0, normalize=False)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_min_negatives_excludes_anchors_with_too_few():
    a, p, y, mem, mem_y, _ = random_case(3, batch=16, classes=4)
    for k in (1, 2, 3, 5):
        got = fast_intra_loss(a, p, y, memory=mem, memory_labels=mem_y, min_negatives=k)
        want = slow_intra_loss(a, p, y, memory=mem, memory_labels=mem_y, min_negatives=k)
        assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_symmetric_mask_may_gate_each_view_separately():
    a, p, y, _, _, _ = random_case(11, batch=10, classes=2)
    mask = torch.arange(20) % 3 != 0
    got = fast_intra_loss(a, p, y, anchor_mask=mask, symmetric=True)
    assert got.item() == pytest.approx(slow_intra_loss(a, p, y, anchor_mask=mask, symmetric=True), rel=1e-5)


def test_bf16_autocast_computes_in_float32():
    a, p, y, mem, mem_y, mask = random_case(5, batch=32, dim=16, classes=4, memory=24)
    want = slow_intra_loss(a, p, y, memory=mem, memory_labels=mem_y, anchor_mask=mask, temperature=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_fp32_inputs = fast_intra_loss(a, p, y, memory=mem, memory_labels=mem_y,
                                                       anchor_mask=mask, temperature=0.05)
        got_bf16_inputs = fast_intra_loss(a.bfloat16(), p.bfloat16(), y, memory=mem.bfloat16(),
                                                       memory_labels=mem_y, anchor_mask=mask, temperature=0.05)
    assert got_fp32_inputs.dtype == torch.float32
    assert got_fp32_inputs.item() == pytest.approx(want, rel=1e-5)
    # bf16 inputs lose precision before the loss; the loss itself stays finite and close
    assert torch.isfinite(got_bf16_inputs)
    assert got_bf16_inputs.item() == pytest.approx(want, rel=0.1)


def test_gradcheck_float64():
    a, p, y, mem, mem_y, mask = random_case(2, batch=6, dim=4, classes=2, memory=5, dtype=torch.float64)
    a.requires_grad_(True)
    p.requires_grad_(True)

    def fn(a, p):
        return fast_intra_loss(a.double(), p.double(), y, memory=mem, memory_labels=mem_y,
                                            anchor_mask=mask, temperature=0.5, symmetric=True)

    # the loss is computed in float32 internally: compare numerically at float32 tolerance
    assert torch.autograd.gradcheck(fn, (a, p), eps=1e-3, atol=2e-3, rtol=2e-3)


def test_gradient_matches_slow_loop_autograd():
    a, p, y, mem, mem_y, mask = random_case(9, batch=8, dim=5, classes=2, memory=6, dtype=torch.float64)
    a1, p1 = a.clone().requires_grad_(True), p.clone().requires_grad_(True)
    fast_intra_loss(a1, p1, y, memory=mem, memory_labels=mem_y, anchor_mask=mask).backward()
    a2, p2 = a.clone().requires_grad_(True), p.clone().requires_grad_(True)
    za, zp, zm = F.normalize(a2, dim=1), F.normalize(p2, dim=1), F.normalize(mem, dim=1)
    terms = []
    for i in range(8):
        if not mask[i]:
            continue
        same = [j for j in range(8) if j != i and y[j] == y[i]]
        negs = [za[j] for j in same] + [zp[j] for j in same]
        negs += [zm[m] for m in range(6) if mem_y[m] == y[i]]
        if negs:
            diffs = torch.stack([(za[i] @ n - za[i] @ zp[i]) / 0.1 for n in negs])
            terms.append(torch.log1p(diffs.exp().sum()))
    torch.stack(terms).mean().backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-6)


def test_no_negatives_gives_differentiable_zero():
    a = torch.randn(4, 3, requires_grad=True)
    p = torch.randn(4, 3, requires_grad=True)
    y = torch.arange(4)  # every image its own class: no negatives anywhere
    loss = fast_intra_loss(a, p, y, temperature=0.05)
    assert loss.item() == 0.0
    loss.backward()
    assert a.grad is not None and torch.count_nonzero(a.grad) == 0


def test_all_anchors_masked_gives_zero():
    a, p, y, mem, mem_y, _ = random_case(1)
    mask = torch.zeros(a.shape[0], dtype=torch.bool)
    loss = fast_intra_loss(a.requires_grad_(), p, y, memory=mem, memory_labels=mem_y, anchor_mask=mask)
    assert loss.item() == 0.0
    loss.backward()


def test_single_class_uses_every_other_image():
    a, p, _, _, _, _ = random_case(4, batch=5)
    y = torch.zeros(5, dtype=torch.long)
    got = fast_intra_loss(a, p, y, temperature=0.05)
    want = slow_intra_loss(a, p, y, temperature=0.05)
    assert torch.isfinite(got) and got.item() == pytest.approx(want, rel=1e-5)


def test_empty_memory_and_extreme_temperature_stay_finite():
    a = torch.randn(8, 4) * 100
    p = -a
    y = torch.zeros(8, dtype=torch.long)
    loss = fast_intra_loss(a, p, y, memory=torch.zeros(0, 4), memory_labels=torch.zeros(0, dtype=torch.long),
                                        temperature=0.05)
    assert torch.isfinite(loss)
    # identical negatives and positive: l = log(1 + n)
    z = torch.ones(3, 2)
    loss = fast_intra_loss(z, z, torch.zeros(3, dtype=torch.long))
    assert loss.item() == pytest.approx(math.log(1 + 4), rel=1e-6)


def test_known_value_two_images():
    # a0 = p0 = e1; other image of the same class at e2 (both views): a0.p0 = 1, a0.n = 0
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    loss = fast_intra_loss(a, a.clone(), y, temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-1 / 0.5)), rel=1e-6)


def test_margin_probability_and_logit_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 1])
    p = logits.softmax(1)
    margin = classification_margin(logits, labels)
    torch.testing.assert_close(margin, torch.stack([p[0, 0] - p[0, 1], p[1, 1] - p[1, 2]]))
    torch.testing.assert_close(classification_margin(logits, labels, "logit"), torch.tensor([1.0, -3.0]))
    assert not classification_margin(logits.requires_grad_(), labels).requires_grad
    with pytest.raises(ValueError, match="unknown margin kind"):
        classification_margin(logits, labels, "ratio")


def test_kd_loss_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
    t = torch.tensor([[3.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    temperature = 4.0
    total = 0.0
    for i in range(2):
        ps, pt = (s[i] / temperature).softmax(0), (t[i] / temperature).softmax(0)
        total += float((pt * (pt.log() - ps.log())).sum())
    assert kd_loss(s, t, temperature).item() == pytest.approx(temperature**2 * total / 2, rel=1e-6)
    assert kd_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kd_loss(s.bfloat16(), t.bfloat16(), temperature).dtype == torch.float32


@pytest.mark.parametrize("symmetric", [False, True])
def test_memory_rows_of_the_anchors_own_image_are_not_negatives(symmetric):
    for seed in range(4):
        a, p, y, mem, mem_y, mask = random_case(seed, batch=12, memory=16)
        g = torch.Generator().manual_seed(100 + seed)
        ids = torch.randperm(40, generator=g)[:12]
        ids[0] = -1  # an anchor of unknown identity excludes nothing
        # memory rows: some are older embeddings of this batch's images (same id), some of others
        mem_ids = torch.where(torch.rand(16, generator=g) < 0.5, ids[torch.randint(0, 12, (16,), generator=g)],
                              torch.randint(40, 60, (16,), generator=g))
        mem_ids[-1] = -1
        kwargs = {"memory": mem, "memory_labels": mem_y, "anchor_mask": mask, "symmetric": symmetric}
        got = fast_intra_loss(a, p, y, anchor_ids=ids, memory_ids=mem_ids, **kwargs)
        want = slow_intra_loss(a, p, y, anchor_ids=ids, memory_ids=mem_ids, **kwargs)
        assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
        # the exclusion matters in this case: without ids the loss differs
        assert fast_intra_loss(a, p, y, **kwargs).item() != pytest.approx(want, rel=1e-5)


def test_invalid_memory_rows_are_no_negatives():
    for seed in range(3):
        a, p, y, mem, mem_y, mask = random_case(seed, memory=16)
        valid = torch.rand(16, generator=torch.Generator().manual_seed(seed)) < 0.5
        got = intra_class_contrastive_loss(a, p, y, memory=[Memory.of(mem, mem_y, valid=valid)], anchor_mask=mask)
        want = slow_intra_loss(a, p, y, memory=mem, memory_labels=torch.where(valid, mem_y, -1), anchor_mask=mask)
        assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert got.item() != pytest.approx(fast_intra_loss(a, p, y, memory=mem, memory_labels=mem_y,
                                                           anchor_mask=mask).item(), rel=1e-5)


def test_class_memory_ids_exclude_like_flat_memory_ids():
    g = torch.Generator().manual_seed(5)
    classes, capacity, dim, batch = 3, 5, 6, 10
    a = torch.randn(batch, dim, generator=g)
    p = a + 0.3 * torch.randn(batch, dim, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    ids = torch.arange(batch) + 100
    class_memory = torch.randn(classes, capacity, dim, generator=g)
    valid = torch.rand(classes, capacity, generator=g) < 0.8
    class_ids = torch.randint(95, 112, (classes, capacity), generator=g)  # some equal anchors' ids
    flat_labels = torch.where(valid, torch.arange(classes)[:, None], -1).reshape(-1)
    for symmetric in (False, True):
        per_class = Memory(class_memory, torch.arange(classes)[:, None].expand(classes, capacity), class_ids, valid)
        got = intra_class_contrastive_loss(a, p, y, memory=[per_class], anchor_ids=ids, symmetric=symmetric)
        want = slow_intra_loss(a, p, y, memory=class_memory.reshape(-1, dim), memory_labels=flat_labels,
                               anchor_ids=ids, memory_ids=class_ids.reshape(-1), symmetric=symmetric)
        assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
