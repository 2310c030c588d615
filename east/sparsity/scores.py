"""Scores (which weights matter) and exact top-k selection with seeded tie-breaking.

Selection is always by rank, never by a value threshold: ``topk_indices`` returns exactly k
positions, ordered by (score descending, random key), where the random key comes from the
sparsifier's seeded CPU generator and is drawn only for the elements tied at the boundary.
So the result is exact, reproducible, and unbiased among ties (e.g. the many zero gradients
of inactive weights, or the constant score of a dense start).

Scorers for updates take ``(weight, grad, generator)`` and return a float tensor of the
weight's shape; higher means "keep" (drop scorers) or "grow first" (grow scorers).
Initial-mask scorers that look at the whole network (SNIP, GraSP, SynFlow) are global
methods: their layer allocation emerges from the scores (``global_select``), with at least
one weight per layer.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from east.errors import EastError

Scorer = Callable[[Tensor, "Tensor | None", torch.Generator], Tensor]


@dataclass(frozen=True)
class ScoringPass:
    """Work an initial-mask scorer did, for the training-FLOPs account: ``examples`` inputs
    through the network, each costing ``factor`` forward passes (3: forward + backward;
    6: a Hessian-vector product, counted as two gradients), with ``nnz`` active weights per
    masked tensor (None: all of them)."""

    examples: int
    factor: int
    nnz: dict[str, int] | None = None


# --------------------------------------------------------------------------- selection


def topk_indices(scores: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Flat indices of the k largest of ``scores`` (1-D), ties broken by seeded random keys.

    Elements scored -inf are never chosen: the caller guarantees that k does not exceed
    the number of finite scores.
    """
    n = scores.numel()
    device = scores.device
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if k >= n:
        return torch.arange(n, device=device)
    if k <= n // 16:
        # Few winners (the usual update): a partial sort of k + 1 is cheapest. When the
        # (k+1)-th score is strictly below the k-th, the top k are unambiguous.
        values, idx = torch.topk(scores, k + 1)
        if bool(values[k] < values[k - 1]):
            if bool(torch.isneginf(values[k - 1])):
                raise AssertionError(f"topk: asked for {k} of fewer eligible elements")
            return idx[:k]
        kth = values[k - 1]
    else:
        kth = torch.kthvalue(scores, n - k + 1).values
    # The k-th largest value splits the scores into sure winners (>) and a tied group (==).
    if bool(torch.isneginf(kth)):
        raise AssertionError(f"topk: asked for {k} of fewer eligible elements")
    above = torch.nonzero(scores > kth).flatten()
    need = k - above.numel()
    tied = torch.nonzero(scores == kth).flatten()
    if need < tied.numel():
        order = torch.randperm(tied.numel(), generator=generator)[:need].to(device)
        tied = tied[order]
    return torch.cat([above, tied])


def select_mask(scores: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Bool tensor of the shape of ``scores`` with exactly k True at the top-k positions."""
    flat = scores.reshape(-1)
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    out[topk_indices(flat, k, generator)] = True
    return out.view(scores.shape)


def global_select(
    scores: Mapping[str, Tensor],
    total: int,
    generator: torch.Generator,
    min_per_layer: int = 1,
) -> dict[str, Tensor]:
    """Choose ``total`` elements over several 1-D score tensors, at least one per tensor.

    Each tensor's best element (top ``min_per_layer``) is reserved first, so no layer is
    left empty whatever the score scale of the others; the rest of the total goes to the
    global top-k of everything left. Returns, per name, the chosen flat indices.
    """
    names = list(scores)
    reserved = {n: topk_indices(scores[n], min(min_per_layer, scores[n].numel()), generator)
                for n in names}
    n_reserved = sum(r.numel() for r in reserved.values())
    if total < n_reserved:
        raise EastError(
            f"sparsity: {total} weights cannot keep {min_per_layer} in each of {len(names)} layers"
        )
    flat = torch.cat([scores[n] for n in names])
    offsets = [0]
    for n in names:
        offsets.append(offsets[-1] + scores[n].numel())
    for n, start in zip(names, offsets, strict=False):
        flat[reserved[n] + start] = -math.inf  # already chosen
    chosen = torch.sort(topk_indices(flat, total - n_reserved, generator)).values
    out: dict[str, Tensor] = {}
    bounds = torch.tensor(offsets[1:-1], dtype=chosen.dtype, device=chosen.device)
    pieces = torch.split(chosen, torch.bincount(torch.bucketize(chosen, bounds, right=True),
                                                minlength=len(names)).tolist())
    for n, start, piece in zip(names, offsets, pieces, strict=False):
        out[n] = torch.cat([reserved[n], piece - start])
    return out


# --------------------------------------------------------------------------- update scorers


def magnitude(weight: Tensor, grad: Tensor | None, generator: torch.Generator) -> Tensor:
    """|w|: drop the smallest weights (Han et al. 2015; RigL/SET drop criterion)."""
    return weight.detach().abs()


def gradient(weight: Tensor, grad: Tensor | None, generator: torch.Generator) -> Tensor:
    """|∂L/∂w| of the current (dense) mini-batch gradient: RigL's growth criterion."""
    if grad is None:
        raise AssertionError("gradient scorer called without a dense gradient")
    return grad.abs()


def random(weight: Tensor, grad: Tensor | None, generator: torch.Generator) -> Tensor:
    """Uniform random scores from the seeded CPU generator: SET/MEST random growth."""
    return torch.rand(weight.shape, generator=generator).to(weight.device)


def mest(lam: float) -> Scorer:
    """|w| + λ|∂L/∂w|: MEST's drop criterion (Yuan et al. 2021, the EM variant)."""

    def score(weight: Tensor, grad: Tensor | None, generator: torch.Generator) -> Tensor:
        if grad is None:
            raise AssertionError("mest scorer called without a dense gradient")
        return weight.detach().abs() + lam * grad.abs()

    return score


def constant(weight: Tensor, grad: Tensor | None, generator: torch.Generator) -> Tensor:
    """All ones: every position ties, so the selection is seeded-random (a dense start
    when the budget is the whole layer)."""
    return torch.ones(weight.shape, device=weight.device)


def drop_scorer(name: str, cfg: Any) -> tuple[Scorer, bool]:
    """The drop (keep) scorer called ``name`` and whether it needs the dense gradient."""
    table: dict[str, tuple[Scorer, bool]] = {
        "magnitude": (magnitude, False),
        "mest": (mest(cfg.mest_lambda), True),
        "random": (random, False),
    }
    if name not in table:
        known = ", ".join(table)
        raise EastError(f"sparsity.drop: unknown drop criterion {name!r} (known: {known})")
    return table[name]


def grow_scorer(name: str) -> tuple[Scorer, bool]:
    """The grow scorer called ``name`` and whether it needs the dense gradient."""
    table: dict[str, tuple[Scorer, bool]] = {
        "gradient": (gradient, True),
        "random": (random, False),
    }
    if name not in table:
        known = ", ".join(table)
        raise EastError(f"sparsity.grow: unknown growth criterion {name!r} (known: {known})")
    return table[name]


# --------------------------------------------------------------------------- initial masks


def _take_batches(batches: Iterable[tuple[Tensor, Tensor]], what: str,
                  enough: Callable[[int, int], bool]) -> list[tuple[Tensor, Tensor]]:
    """Consume batches until ``enough(n_batches, n_samples)``; at least one is required."""
    taken: list[tuple[Tensor, Tensor]] = []
    samples = 0
    for x, y in batches:
        taken.append((x, y))
        samples += int(x.shape[0])
        if enough(len(taken), samples):
            break
    if not taken:
        raise EastError(f"sparsity.init: {what} needs at least one training batch")
    return taken


def _scoring_copy(model: nn.Module, beta: float | None) -> nn.Module:
    """A private copy to score on: the real model's weights, BN statistics and grads are
    left untouched. ``beta`` (if given) sets the copy's DyReLU phasing factor."""
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.grad = None
        p.requires_grad_(True)
    if beta is not None and hasattr(net, "set_beta"):
        net.set_beta(beta)
    return net


def _copy_params(net: nn.Module, names: Iterable[str]) -> dict[str, nn.Parameter]:
    return {n: net.get_parameter(n) for n in names}


def snip_scores(model: nn.Module, names: list[str], batches: Iterable[tuple[Tensor, Tensor]],
                loss_fn: Callable[[Tensor, Tensor], Tensor],
                passes: list[ScoringPass] | None = None) -> dict[str, Tensor]:
    """SNIP connection sensitivity |∂L/∂w ⊙ w| (Lee et al., "SNIP: Single-shot Network
    Pruning based on Connection Sensitivity", ICLR 2019), on one mini-batch as in the paper,
    with the model in training mode (batch statistics) at its current DyReLU β."""
    data = _take_batches(batches, "snip", lambda nb, ns: nb >= 1)
    net = _scoring_copy(model, beta=None)
    net.train()
    params = _copy_params(net, names)
    for x, y in data:
        loss_fn(net(x), y).backward()
    if passes is not None:
        passes.append(ScoringPass(sum(int(x.shape[0]) for x, _ in data), 3))
    return {n: (p.grad * p.detach()).abs() for n, p in params.items()}


GRASP_TEMPERATURE = 200.0
GRASP_SAMPLES_PER_CLASS = 10


def grasp_scores(model: nn.Module, names: list[str], batches: Iterable[tuple[Tensor, Tensor]],
                 loss_fn: Callable[[Tensor, Tensor], Tensor],
                 passes: list[ScoringPass] | None = None) -> dict[str, Tensor]:
    """GraSP keep-scores θ ⊙ Hg (Wang et al., "Picking Winning Tickets Before Training by
    Preserving Gradient Flow", ICLR 2020). The paper removes the weights with the largest
    −θ ⊙ Hg, i.e. keeps the largest θ ⊙ Hg. Defaults of the paper: softmax temperature 200
    and 10 samples per class (here: batches until 10·num_classes samples are seen). The
    Hessian-gradient product needs double backward, so DyReLU runs at β = 0 (plain ReLU)."""
    net = _scoring_copy(model, beta=0.0)
    net.train()
    params = _copy_params(net, names)
    plist = list(params.values())
    iterator = iter(batches)
    first = _take_batches(iterator, "grasp", lambda nb, ns: True)
    num_classes = int(net(first[0][0]).shape[1])
    want = GRASP_SAMPLES_PER_CLASS * num_classes
    rest = [] if first[0][0].shape[0] >= want else _take_batches(
        iterator, "grasp", lambda nb, ns: ns + first[0][0].shape[0] >= want)
    data = first + rest
    # Pass 1: g = ∇L at temperature T, without a graph.
    g = [torch.zeros_like(p) for p in plist]
    for x, y in data:
        grads = torch.autograd.grad(loss_fn(net(x) / GRASP_TEMPERATURE, y), plist)
        for acc, gi in zip(g, grads, strict=True):
            acc.add_(gi)
    # Pass 2: Hg = ∇(∇L · stopgrad(g)).
    for p in plist:
        p.grad = None
    for x, y in data:
        grads = torch.autograd.grad(loss_fn(net(x) / GRASP_TEMPERATURE, y), plist,
                                    create_graph=True)
        z = sum((gi * acc).sum() for gi, acc in zip(grads, g, strict=True))
        z.backward()
    if passes is not None:
        examples = sum(int(x.shape[0]) for x, _ in data)
        # The forward that read the class count, then the two passes.
        passes += [ScoringPass(int(first[0][0].shape[0]), 1), ScoringPass(examples, 3),
                   ScoringPass(examples, 6)]
    return {n: p.detach() * p.grad for n, p in params.items()}


def synflow_masks(model: nn.Module, names: list[str], input_shape: tuple[int, ...], total: int,
                  rounds: int, generator: torch.Generator,
                  min_per_layer: int = 1,
                  passes: list[ScoringPass] | None = None) -> dict[str, Tensor]:
    """Iterative SynFlow (Tanaka et al., "Pruning neural networks without any data by
    iteratively conserving synaptic flow", NeurIPS 2020): data-free. On a float64 copy in
    eval mode with every parameter made non-negative (|θ|), R = 1ᵀ f(1) for an all-ones
    input of the data's shape; score |θ ⊙ ∂R/∂θ|; keep the top d^(k/n) of the weights at
    round k = 1..n (exponential schedule, n = 100 by default), masks carried over rounds.

    Per-layer minimum (our addition, documented in docs/design.md): each round keeps the
    best-scored weight of every layer before the global top-k, so no layer is emptied at
    99.99 % (layer collapse by allocation). DyReLU runs at β = 0 (plain ReLU), which keeps
    the network positively homogeneous as SynFlow assumes.
    """
    net = _scoring_copy(model, beta=0.0).double().eval()
    with torch.no_grad():
        for t in itertools.chain(net.parameters(), net.buffers()):
            if t.is_floating_point():
                t.abs_()
    params = _copy_params(net, names)
    weights0 = {n: p.detach().clone() for n, p in params.items()}
    device = next(iter(params.values())).device
    masks = {n: torch.ones(p.shape, dtype=torch.bool, device=device) for n, p in params.items()}
    n_unique = sum(p.numel() for p in params.values())
    density = total / n_unique
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    for k in range(1, rounds + 1):
        keep = total if k == rounds else max(total, round(density ** (k / rounds) * n_unique))
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(weights0[n] * masks[n])
        for p in net.parameters():
            p.grad = None
        net(ones).sum().backward()
        if passes is not None:  # one input, at this round's starting masks
            passes.append(ScoringPass(1, 3, {n: int(m.sum()) for n, m in masks.items()}))
        # Only active weights can be kept (the keep count never grows), so rank those.
        active = {n: torch.nonzero(masks[n].reshape(-1)).flatten() for n in names}
        scores = {n: (params[n].grad * params[n].detach()).abs().reshape(-1)[active[n]]
                  for n in names}
        if not all(bool(torch.isfinite(s).all()) for s in scores.values()):
            raise EastError("sparsity.init: synflow scores overflowed float64 on this model")
        chosen = global_select(scores, keep, generator, min_per_layer)
        for n in names:
            new = torch.zeros(masks[n].numel(), dtype=torch.bool, device=device)
            new[active[n][chosen[n]]] = True
            masks[n] = new.view(masks[n].shape)
    return masks
