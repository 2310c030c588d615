"""Methods: updates (drop/grow, cyclic, gradual), initial masks, resume equality, bad input."""

from __future__ import annotations

import copy
import io
import itertools
import math
import re
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from east.errors import EastError
from east.models import build_model
from east.sparsity import scores as S
from east.sparsity.budget import allocate, density_total
from east.sparsity.methods import Sparsifier, build_sparsifier
from east.sparsity.presets import DYNAMIC_METHODS, METHODS, PRESETS, resolve_sparsity

SPE, TOTAL = 4, 48



def make(method: str, sparsity: float = 0.9, seed: int = 0, arch: str = "resnet20",
         total: int = TOTAL, **knobs: Any) -> tuple[torch.nn.Module, Sparsifier,
                                                    torch.optim.Optimizer]:
    cfg = resolve_sparsity({"method": method, "sparsity": sparsity, **knobs}, "test")
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, in_channels=3,
                        activation="dyrelu" if cfg.dyrelu else "relu",
                        sharing_ratio=cfg.sharing_ratio if cfg.sharing else None)
    sp = build_sparsifier(model, cfg, steps_per_epoch=SPE, total_steps=total, seed=seed,
                          debug=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    return model, sp, opt


def batch(step: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def train(model: torch.nn.Module, sp: Sparsifier, opt: torch.optim.Optimizer,
          steps: range, on_update: Any = None) -> None:
    for step in steps:
        model.set_beta(sp.beta(step))
        x, y = batch(step)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        sp.after_backward(step)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        before = {n: m.clone() for n, m in sp.masks.items()}
        weights = [p.detach().clone() for p in sp.params]
        grads = sp._grads
        updates = sp.updates
        sp.after_step(step, opt)
        if on_update is not None and sp.updates != updates:
            on_update(step, before, weights, grads)


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize("k", [1, 3, 40, 700])  # both the partial-sort and the select path
def test_topk_is_exact_with_seeded_tie_breaking(k: int) -> None:
    scores = torch.cat([torch.full((500,), 2.0), torch.full((500,), 1.0), torch.zeros(24)])
    scores[7] = 5.0  # one sure winner
    picks = []
    for seed in (0, 0, 1):
        idx = S.topk_indices(scores, k, torch.Generator().manual_seed(seed))
        assert idx.numel() == k == idx.unique().numel()
        assert 7 in idx.tolist()
        chosen = scores[idx]
        assert chosen.min() >= scores[~torch.isin(torch.arange(1024), idx)].max()
        picks.append(sorted(idx.tolist()))
    assert picks[0] == picks[1]  # same seed, same choice
    assert k == 1 or picks[0] != picks[2]  # the tied group is resolved by the seed


def test_topk_never_picks_ineligible() -> None:
    scores = torch.tensor([1.0, -math.inf, 1.0, -math.inf])
    assert sorted(S.topk_indices(scores, 2, torch.Generator()).tolist()) == [0, 2]
    with pytest.raises(AssertionError):
        S.topk_indices(scores, 3, torch.Generator())


def test_global_select_reserves_one_per_layer() -> None:
    scores = {"big": torch.arange(100.0) + 100, "small": torch.tensor([0.5, 0.1]),
              "tiny": torch.tensor([0.0])}
    chosen = S.global_select(scores, 5, torch.Generator())
    assert sorted(chosen["small"].tolist()) == [0] and chosen["tiny"].tolist() == [0]
    assert sorted(chosen["big"].tolist()) == [97, 98, 99]


# --------------------------------------------------------------------------- drop and grow


DYNAMIC_CASES = [
    ("rigl", {}),
    ("set", {}),
    ("mest", {}),
    ("rigl", {"cyclic": True, "cycle_length": 6, "cycle_interval": 2}),
    ("east", {"cycle_length": 6, "cycle_interval": 2}),
    ("granet", {"prune_interval": 4, "prune_end": 16}),
]


@pytest.mark.parametrize(("method", "knobs"), DYNAMIC_CASES)
def test_updates_disjoint_and_grown_zero(method: str, knobs: dict[str, Any]) -> None:
    # The spec's reading (regrow_dropped: false): drop and grow sets are disjoint.
    model, sp, opt = make(method, update_interval=4, update_end="100%", regrow_dropped=False,
                          **knobs)
    sp.initialize(model, [], None)
    events: list[tuple[str, str, torch.Tensor]] = []
    sp.on_change = lambda name, kind, changed: events.append((name, kind, changed.clone()))
    checked = 0

    def on_update(step: int, before: dict, weights: list, grads: Any) -> None:
        nonlocal checked
        drops: dict[str, torch.Tensor] = {}
        grows: dict[str, torch.Tensor] = {}
        for name, kind, changed in events:
            target = drops if kind == "drop" else grows
            target[name] = target.get(name, torch.zeros_like(changed)) | changed
        events.clear()
        for i, name in enumerate(sp.names):
            mask, p = sp.masks[name], sp.params[i]
            d = drops.get(name, torch.zeros_like(mask))
            g = grows.get(name, torch.zeros_like(mask))
            assert not torch.any(d & g), (step, name)
            assert torch.all(before[name][d]) and not torch.any(before[name][g])
            assert torch.equal(mask, (before[name] & ~d) | g)
            assert torch.all(p.detach()[g] == 0) and torch.all(p.detach()[d] == 0)
            momentum = opt.state[p]["momentum_buffer"]
            assert torch.all(momentum[g] == 0) and torch.all(momentum[d] == 0)
            assert int(mask.sum()) == sp.budgets[name]
            checked += int(g.sum()) + int(d.sum())

    train(model, sp, opt, range(24), on_update)
    assert sp.updates >= 3 and checked > 0
    assert sum(int(m.sum()) for m in sp.masks.values()) == sp.base_total


def test_rigl_drops_smallest_and_grows_largest_gradient() -> None:
    model, sp, opt = make("rigl", update_interval=4, update_end="100%", regrow_dropped=False)
    sp.initialize(model, [], None)
    seen = []

    def on_update(step: int, before: dict, weights: list, grads: Any) -> None:
        f = sp.rules[-1].fraction(step + 1)
        for i, name in enumerate(sp.names):
            old, new = before[name], sp.masks[name]
            w, g = weights[i].abs(), grads.by_layer[i].abs()
            dropped, grown, kept = old & ~new, ~old & new, old & new
            active = int(old.sum())
            k = min(math.ceil(f * active), active, old.numel() - active)
            assert int(dropped.sum()) == int(grown.sum()) == k, name
            if k and kept.any():
                assert w[dropped].max() <= w[kept].min()  # the k smallest |w| went
            if k and (~old & ~grown).any():
                assert g[grown].min() >= g[~old & ~grown].max()  # the k largest |grad| came
        seen.append(step)

    train(model, sp, opt, range(12), on_update)
    assert seen == [3, 7, 11]


def test_set_grows_at_random_mest_drops_by_weight_and_gradient() -> None:
    model, sp, opt = make("mest", update_interval=4, update_end="100%", mest_lambda=2.0,
                          regrow_dropped=False)
    sp.initialize(model, [], None)

    def on_update(step: int, before: dict, weights: list, grads: Any) -> None:
        for i, name in enumerate(sp.names):
            old, new = before[name], sp.masks[name]
            score = weights[i].abs() + 2.0 * grads.by_layer[i].abs()
            dropped, kept = old & ~new, old & new
            if dropped.any():
                assert score[dropped].max() <= score[kept].min()

    train(model, sp, opt, range(8), on_update)
    assert sp.updates == 2


def _rigl_reference(old: torch.Tensor, w: torch.Tensor, g: torch.Tensor,
                    f: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RigL's update with regrowth, written out independently: drop the k smallest |w| of
    the active weights, then grow the k largest |grad| among all inactive ones, just-dropped
    included (random float scores: no ties). Returns (new mask, dropped, grown)."""
    flat_old, aw, ag = old.reshape(-1), w.abs().reshape(-1), g.abs().reshape(-1)
    active = int(flat_old.sum())
    k = min(math.ceil(f * active), active)
    order = sorted(range(flat_old.numel()), key=lambda j: float(aw[j]))
    dropped_idx = [j for j in order if flat_old[j]][:k]
    after_drop = flat_old.clone()
    after_drop[dropped_idx] = False
    candidates = sorted((j for j in range(flat_old.numel()) if not after_drop[j]),
                        key=lambda j: -float(ag[j]))
    grown_idx = candidates[:k]
    new = after_drop.clone()
    new[grown_idx] = True
    dropped = torch.zeros_like(flat_old)
    dropped[dropped_idx] = True
    grown = torch.zeros_like(flat_old)
    grown[grown_idx] = True
    return new.view(old.shape), dropped.view(old.shape), grown.view(old.shape)


def test_rigl_regrowth_matches_reference_and_keeps_regrown_weights() -> None:
    """The default (RigL's and the authors' code): a weight dropped by an update may be
    regrown by it, and then keeps its value and momentum; newly grown ones start at 0."""
    model, sp, opt = make("rigl", update_interval=4, update_end="100%")
    assert sp.cfg.regrow_dropped
    sp.initialize(model, [], None)
    regrown_total = 0

    def on_update(step: int, before: dict, weights: list, grads: Any) -> None:
        nonlocal regrown_total
        f = sp.rules[-1].fraction(step + 1)
        for i, name in enumerate(sp.names):
            old, p = before[name], sp.params[i]
            expected, dropped, grown = _rigl_reference(old, weights[i], grads.by_layer[i], f)
            assert torch.equal(sp.masks[name], expected), name
            regrown, fresh = dropped & grown, grown & ~old
            stayed = old & expected
            assert torch.equal(p.detach()[stayed], weights[i][stayed])  # regrown included
            assert torch.all(p.detach()[fresh] == 0) and torch.all(p.detach()[~expected] == 0)
            momentum = opt.state[p]["momentum_buffer"]
            assert torch.all(momentum[fresh] == 0) and torch.all(momentum[~expected] == 0)
            assert torch.all(momentum[regrown] == momentum_before[i][regrown])
            regrown_total += int(regrown.sum())

    momentum_before: list[torch.Tensor] = []

    def remember(step: int) -> None:
        momentum_before[:] = [opt.state[p]["momentum_buffer"].clone() for p in sp.params]

    for step in range(12):
        model.set_beta(sp.beta(step))
        x, y = batch(step)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        sp.after_backward(step)
        opt.step()
        before = {n: m.clone() for n, m in sp.masks.items()}
        weights = [p.detach().clone() for p in sp.params]
        remember(step)
        grads, updates = sp._grads, sp.updates
        sp.after_step(step, opt)
        if sp.updates != updates:
            on_update(step, before, weights, grads)
    assert sp.updates == 3
    assert regrown_total > 0  # the case this test is about did occur
    assert sp.last_update["drop_grow.regrown"] >= 0


@pytest.mark.parametrize("method", ["set", "mest", "granet", "east"])
def test_regrowth_default_keeps_budgets_and_fresh_weights_zero(method: str) -> None:
    knobs = {"granet": {"prune_interval": 4, "prune_end": 16},
             "east": {"cycle_length": 6, "cycle_interval": 2}}.get(method, {})
    model, sp, opt = make(method, update_interval=4, update_end="100%", **knobs)
    sp.initialize(model, [], None)

    def on_update(step: int, before: dict, weights: list, grads: Any) -> None:
        for i, name in enumerate(sp.names):
            old, new, p = before[name], sp.masks[name], sp.params[i]
            assert int(new.sum()) == sp.budgets[name]
            assert torch.equal(p.detach()[old & new], weights[i][old & new])
            assert torch.all(p.detach()[~new] == 0) and torch.all(p.detach()[new & ~old] == 0)

    train(model, sp, opt, range(24), on_update)
    assert sp.updates >= 3
    assert sum(int(m.sum()) for m in sp.masks.values()) == sp.base_total


def test_cyclic_densities_follow_the_schedule() -> None:
    model, sp, opt = make("rigl", sparsity=0.99, cyclic=True, cycles=2, cycle_length=8,
                          cycle_interval=2, update_interval=4, update_end="100%")
    sp.initialize(model, [], None)
    cyc = sp.rules[0].schedule
    totals = {}

    def on_update(step: int, before: dict, weights: list, grads: Any) -> None:
        it = step + 1
        totals[it] = sum(sp.budgets.values())
        if it <= cyc.end:
            density = cyc.density(it)
            expected = (sp.base_budgets if density == sp.target_density else
                        allocate(sp.shapes, density_total(density, sp.counts.n_unique)))
            assert sp.budgets == expected
            assert {n: int(m.sum()) for n, m in sp.masks.items()} == expected

    train(model, sp, opt, range(28), on_update)
    base = sp.base_total
    assert totals[8] == totals[16] == base  # back at d' at the end of each cycle
    assert totals[4] == totals[12] == density_total(3 * sp.target_density, sp.counts.n_unique)
    assert totals[2] > base and totals[4] > totals[2]
    # After the cycles: plain RigL at the fixed target density.
    assert [t for t in totals if t > 16] == [20, 24, 28]
    assert all(totals[t] == base for t in totals if t > 16)


@pytest.mark.parametrize("method", ["gmp", "granet"])
def test_gradual_pruning_reaches_the_target_exactly(method: str) -> None:
    model, sp, opt = make(method, sparsity=0.99, prune_start=4, prune_end=18,
                          prune_interval=4, **({"update_interval": 6} if method == "granet"
                                               else {}))
    sp.initialize(model, [], None)
    assert all(sp.budgets[n] == sp.sizes[n] for n in sp.names)  # from dense
    history = []

    def on_update(step: int, before: dict, weights: list, grads: Any) -> None:
        history.append((step + 1, dict(sp.budgets)))

    train(model, sp, opt, range(22), on_update)
    pruning = {it: b for it, b in history if it in (4, 8, 12, 16, 18)}
    assert list(pruning) == [4, 8, 12, 16, 18]
    assert pruning[4] == sp.sizes  # the cubic schedule starts at density 1
    totals = [sum(b.values()) for b in pruning.values()]
    assert totals == sorted(totals, reverse=True) and totals[1] > totals[3] > sp.base_total
    for (_, a), (_, b) in itertools.pairwise(history):
        assert all(b[n] <= a[n] for n in sp.names)  # never grows a layer
    assert pruning[18] == sp.base_budgets  # exactly the target budget at prune_end
    assert sum(pruning[18].values()) == sp.base_total
    assert sp.budgets == sp.base_budgets
    assert {n: int(m.sum()) for n, m in sp.masks.items()} == sp.base_budgets


# --------------------------------------------------------------------------- initial masks


def _check_global(sp: Sparsifier) -> None:
    counts = {n: int(m.sum()) for n, m in sp.masks.items()}
    assert sum(counts.values()) == sp.base_total
    assert min(counts.values()) >= 1
    assert counts == sp.budgets == sp.base_budgets


def _assert_top_scores(sp: Sparsifier, scores: dict[str, torch.Tensor]) -> None:
    """Outside each layer's one reserved weight, the kept scores dominate the pruned ones."""
    kept, pruned = [], []
    for n, m in sp.masks.items():
        s = scores[n][m]
        top = s.max()
        rest = s[s != top] if (s == top).sum() == 1 else s
        kept.append(rest)
        pruned.append(scores[n][~m])
    assert torch.cat(kept).min() >= torch.cat(pruned).max()


def test_snip_is_global_top_connection_sensitivity() -> None:
    model, sp, _ = make("snip", sparsity=0.99)
    reference = copy.deepcopy(model)
    sp.initialize(model, iter([batch(0, 32), batch(1, 32)]), F.cross_entropy)
    _check_global(sp)
    x, y = batch(0, 32)  # SNIP reads exactly one batch
    F.cross_entropy(reference(x), y).backward()
    params = reference.masked_parameters()
    _assert_top_scores(sp, {n: (p.grad * p.detach()).abs() for n, p in params.items()})


def test_grasp_keeps_largest_theta_hg() -> None:
    model, sp, _ = make("grasp", sparsity=0.99)
    reference = copy.deepcopy(model)
    data = [batch(i, 64) for i in range(3)]
    sp.initialize(model, iter(data), F.cross_entropy)
    _check_global(sp)
    scores = S.grasp_scores(reference, sp.names, iter(data), F.cross_entropy)
    _assert_top_scores(sp, scores)


def _live_layers(model: torch.nn.Module, masks: dict[str, torch.Tensor],
                 shape: tuple[int, ...]) -> tuple[float, dict[str, int]]:
    """R = 1ᵀf(1) of the |θ|-masked float64 network, and live active weights per layer
    (those on at least one input→output path: non-zero synaptic flow)."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            if t.is_floating_point():
                t.abs_()
    out = net(torch.ones((1, *shape), dtype=torch.float64)).sum()
    out.backward()
    live = {}
    for n, p in net.masked_parameters().items():
        live[n] = int(((p.grad * p.detach()).abs()[masks[n]] > 0).sum())
    return float(out.detach()), live


def test_synflow_extreme_no_empty_layer() -> None:
    model, sp, _ = make("synflow", sparsity=0.9999)  # resnet20: 27 weights for 22 layers
    sp.initialize(model, iter([batch(0)]), None)
    _check_global(sp)
    r, live = _live_layers(model, sp.masks, (3, 8, 8))
    assert r > 0  # the allocation leaves an input→output path
    assert sum(live.values()) > 0


@pytest.mark.slow
def test_synflow_resnet34_9999_100_rounds() -> None:
    model, sp, _ = make("synflow", sparsity=0.9999, arch="resnet34")
    assert sp.cfg.synflow_rounds == 100
    sp.initialize(model, iter([batch(0)]), None)
    _check_global(sp)
    assert sp.base_total == 2_127
    r, _ = _live_layers(model, sp.masks, (3, 8, 8))
    assert r > 0


def test_random_init_is_seeded_and_erk() -> None:
    _, a, _ = make("static", seed=3)
    a.initialize()
    _, b, _ = make("static", seed=3)
    b.initialize()
    _, c, _ = make("static", seed=4)
    c.initialize()
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.names)
    assert not all(torch.equal(a.masks[n], c.masks[n]) for n in a.names)
    assert a.budgets == allocate(a.shapes, a.base_total, "erk")


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize(("method", "knobs"), [
    ("east", {"cycle_length": 4, "cycle_interval": 2, "update_interval": 3,
              "update_end": "100%"}),
    ("set", {"update_interval": 3, "update_end": "100%"}),
])
def test_resume_equality(method: str, knobs: dict[str, Any]) -> None:
    n, k = 14, 5
    model, sp, opt = make(method, **knobs)
    sp.initialize(model, [], None)
    start = copy.deepcopy(model.state_dict())
    train(model, sp, opt, range(n))

    model2, sp2, opt2 = make(method, **knobs)
    model2.load_state_dict(start)
    sp2.initialize(model2, [], None)
    train(model2, sp2, opt2, range(k))
    buffer = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(),
                "sparsity": sp2.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    model3, sp3, opt3 = make(method, seed=99, **knobs)  # different init, then restored
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    sp3.load_state_dict(saved["sparsity"])
    train(model3, sp3, opt3, range(k, n))
    assert sp3.updates == sp.updates and sp3.budgets == sp.budgets
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, model3.state_dict()[name]), name
    assert sp3.state_dict()["generator"].equal(sp.state_dict()["generator"])


def test_load_state_dict_rejects_other_config() -> None:
    _, sp, _ = make("rigl", sparsity=0.9)
    _, other, _ = make("rigl", sparsity=0.99)
    with pytest.raises(EastError, match=r"sparsity\.sparsity"):
        other.load_state_dict(sp.state_dict())


# --------------------------------------------------------------------------- the table


def test_every_method_is_a_preset_of_parts_citing_its_paper() -> None:
    from east.sparsity import parts as P

    for name in METHODS:
        spec = PRESETS[name]
        if name not in ("dense", "static"):
            assert re.search(r"(19|20)\d\d", spec.reference), name
        # The knobs a row may set are exactly those of the method's parts.
        assert spec.knobs == {"method", "sparsity"} | {k for p in spec.parts for k in p.knobs}
    assert PRESETS["rigl"].knobs == {"method", "sparsity", *P.DISTRIBUTION.knobs,
                                     *P.TIMING.knobs, *(k for t in P.TRICKS.values()
                                                        for k in t.knobs)}
    assert "distribution" not in PRESETS["synflow"].knobs  # global scores allocate
    assert "synflow_rounds" in PRESETS["synflow"].knobs
    assert {"prune_end", "update_interval"} <= PRESETS["granet"].knobs
    # Every EAST trick is a switch of every drop-and-grow method.
    assert set(DYNAMIC_METHODS) == {"set", "rigl", "granet", "mest", "east"}
    for name in DYNAMIC_METHODS:
        resolve_sparsity({"method": name, "sparsity": 0.9, "cyclic": True, "dyrelu": True,
                          "sharing": True}, "t")
    assert PRESETS["rigl"].defaults["update_interval"] == 4000
    assert PRESETS["set"].defaults["update_interval"] == 1500


def test_docs_hold_the_method_table() -> None:
    """docs/design.md shows the table the code validates with, verbatim."""
    from pathlib import Path

    from east.sparsity.presets import method_table

    design = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    assert method_table() in design


@pytest.mark.parametrize(("method", "grows_by_gradient"),
                         [("rigl", True), ("set", False), ("mest", False)])
def test_cyclic_growth_uses_the_rows_own_scorers(method: str, grows_by_gradient: bool) -> None:
    """RigL's cycles grow by |grad|, SET's and MEST's at random (their grow scorer); MEST's
    cycles also prune by its own |w| + λ|g|."""
    knobs = {"mest_lambda": 2.0} if method == "mest" else {}
    model, sp, opt = make(method, sparsity=0.99, cyclic=True, cycles=1, cycle_length=8,
                          cycle_interval=2, update_interval=100, **knobs)
    sp.initialize(model, [], None)
    grown_by_top_grad: list[bool] = []
    pruned_by_score: list[bool] = []
    updates_without_gradient = 0

    def on_update(step: int, before: dict, weights: list, grads: Any) -> None:
        nonlocal updates_without_gradient
        if grads is None:  # no scorer of the update reads a gradient: none was kept
            updates_without_gradient += 1
            return
        for i, name in enumerate(sp.names):
            old, new = before[name], sp.masks[name]
            g = grads.by_layer[i].abs()
            grown, dropped, kept = ~old & new, old & ~new, old & new
            if grown.sum() >= 3 and (~old & ~new).any():
                grown_by_top_grad.append(bool(g[grown].min() >= g[~old & ~new].max()))
            if method == "mest" and dropped.any() and kept.any():
                score = weights[i].abs() + 2.0 * g
                pruned_by_score.append(bool(score[dropped].max() <= score[kept].min()))

    train(model, sp, opt, range(8), on_update)
    assert sp.updates == 4
    if method == "set":  # magnitude drop, random growth: no gradient is ever taken
        assert updates_without_gradient == 4 and not grown_by_top_grad
    else:
        assert grown_by_top_grad  # growth happened in layers big enough to tell
    if grows_by_gradient:
        assert all(grown_by_top_grad)
    else:  # random growth is almost never exactly the top-|grad| set
        assert not any(grown_by_top_grad)
    if method == "mest":
        assert pruned_by_score and all(pruned_by_score)
    # Only gradient growth takes the gradient w.r.t. all weights (training FLOPs).
    assert all(r.grows_by_gradient == grows_by_gradient for r in sp.rules)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"method": "nope", "sparsity": 0.9}, "method"),
        ({"method": "rigl", "sparsity": 1.0}, "sparsity"),
        ({"method": "rigl", "sparsity": -0.5}, "sparsity"),
        ({"method": "static", "sparsity": 0.9, "cyclic": True}, "cyclic"),
        ({"method": "synflow", "sparsity": 0.9, "cycle_length": "10%"}, "cycle_length"),
        ({"method": "rigl", "sparsity": 0.9, "prune_end": "50%"}, "prune_end"),
        ({"method": "snip", "sparsity": 0.9, "distribution": "erk"}, "distribution"),
        ({"method": "rigl", "sparsity": 0.9, "distribution": "random"}, "distribution"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(EastError) as info:
        resolve_sparsity(raw, "params/x.yaml:row")
    message = str(info.value)
    assert "\n" not in message and f"params/x.yaml:row.{field}" in message


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"method": "rigl", "update_interval": "0%"}, "update_interval"),
        ({"method": "gmp", "prune_end": "150%"}, "prune_end"),
        ({"method": "rigl", "cyclic": True, "cycles": 3, "cycle_length": "50%"}, "cycle_length"),
    ],
)
def test_bad_durations_name_the_field(knobs: dict[str, Any], field: str) -> None:
    cfg = resolve_sparsity({"sparsity": 0.9, **knobs}, "t")
    model = build_model("resnet20", num_classes=10, in_channels=3)
    with pytest.raises(EastError, match=rf"sparsity\.{field}"):
        build_sparsifier(model, cfg, steps_per_epoch=SPE, total_steps=TOTAL, seed=0)


def test_too_few_weights_for_one_per_layer() -> None:
    cfg = resolve_sparsity({"method": "rigl", "sparsity": 0.99999}, "t")  # 3 weights, 22 layers
    model = build_model("resnet20", num_classes=10, in_channels=3)
    with pytest.raises(EastError, match="sparsity"):
        build_sparsifier(model, cfg, steps_per_epoch=SPE, total_steps=TOTAL, seed=0)
