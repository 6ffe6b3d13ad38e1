"""Linear probes on frozen features: multinomial logistic regression by full-batch L-BFGS (pure torch).

Objective. For features ``x_i`` [D], labels ``y_i`` in ``0..C-1`` (``N`` rows), weight ``W`` [C, D]
and bias ``b`` [C], :func:`fit_probe` minimises

    L(W, b) = (1/N) sum_i CE(W x_i + b + a, y_i)  +  (wd / 2) ||W - W_a||_F^2

with ``CE(z, y) = logsumexp(z) - z_y``, the bias free and unpenalised (held at the anchor's for
the anchored probe), and ``a = 0`` -- or ``a = log pi_s``
(the training label frequencies) for the balanced, logit-adjusted loss: the head then predicts
``W x + b``, which is fitted as if the classes were balanced. The anchor ``W_a`` is zero for the
plain probe and a zero-shot head's weights for the anchored one (:mod:`glacli.core.anchor`). In the
coordinates ``Delta = W - W_a`` the anchored problem is the plain one with every row's logits
shifted by ``W_a x``; the solver works in them, so the start, the stop rule and the search below
hold for both with "zero" read as "the anchor".

scikit-learn's ``LogisticRegression(C=C)`` (lbfgs, multinomial, unpenalised intercept) minimises
``0.5 ||W||^2 + C sum_i CE_i``. Dividing it by ``C N`` gives ``L`` above, so both solve the same
problem when ``wd = 1 / (C N)`` (:func:`wd_to_c`). The problem is strictly convex
in ``W`` (for ``wd > 0``), so the solution does not depend on the starting point; starting from a
zero-shot head (``init``) or a neighbouring penalty's solution only saves iterations. Because
the plain probe's bias is free, its balanced loss gives exactly the plain solution with
``log pi_s`` subtracted from the bias (post-hoc logit adjustment).

Computation. Loss and gradient are accumulated over row chunks (closed-form gradient
``(softmax(z) - onehot(y))^T x / N + wd (W - W_a)``), so memory is one chunk of
logits whatever ``N`` is. The rows come from a :class:`ProbeData`, whose ``chunks`` callable either
slices tensors held on the compute device (GPU when present) or streams a file from disk on every
pass; this module does no I/O itself.

Penalty search (:func:`search_penalty`), as the CLIP paper's linear-probe protocol: a log-spaced
grid of penalties, 8 per decade from 1 down to 1e-7. First every 8th (one per decade), from the
strongest penalty down, each fit warm-started from the previous solutions (see "Starts" below); the walk stops at the
first decade (``patience``) that validates worse than the best so far, counted once the path
has left the plateau of the strongest penalties. On that plateau the head is still close to its
anchor (``W - W_a`` is about minus the gradient at the anchor over ``wd``): every fit ranks the
classes as the anchor does (zero: by that gradient), so validation accuracy moves only by
noise, and an early stop there misses the optimum. The path has left it once the validation NLL
has fallen by ``PLATEAU_NLL_DROP`` of its value at the strongest penalty. Beyond, validation
accuracy is unimodal in the penalty in practice, and the weakest penalties are the costliest fits.
The anchored walk never stops early: its strongest penalty's head is already a good model (the
zero-shot one), so a 10% fall of its NLL is a few hundredths of a nat, and validation accuracy
then moves by single rows across decades before the shots pay off. On the demo embeddings
(4 shots, 20 validation rows) the early stop chose ``wd = 0.24`` at 86.3% test accuracy where the
full walk chose ``1e-5`` at 89.7%; the anchored fits are cheap (the shots are few, the start good).
Then a finer search around the best:
its neighbours at half, quarter and eighth decades, each level re-centred on the best so far.
The chosen penalty is the best evaluated one by validation accuracy (ties: lower validation
NLL); :func:`train_probe` refits it to a tight tolerance and calibrates a temperature on the
validation set by NLL.

Starts. Every fit's optimum is unique, so starts change the solver's path (and, within the
search's tolerance, which of two near-tied penalties validates better), never the optimum. A
coarse fit starts from the secant extrapolation (in ``log wd``) of the two previous decades'
solutions, ``2 W_{k-1} - W_{k-2}`` (the first two from the previous solution, or the default
start); a refinement fit from the solutions of the centre and of the nearest evaluated penalty
on the other side, interpolated linearly in ``log wd`` (the centre's alone at the grid's end);
the final refit from the chosen point's solution. Each also starts with the L-BFGS curvature
pairs of the fit it came from (the previous decade's or the centre's), shifted to its penalty
(:class:`Curvature`: exact, the penalty is quadratic) instead of a steepest-descent first step.
On the CLIP ViT-B/32 ImageNet few-shot splits (1,000 classes, seeds 0-1, 1/2/4 shots) this cut the
objective evaluations of ``gla fit --val`` from 2,533 to 1,487 over the 12 searches (docs/probe.md).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from glacli.base import chunking
from glacli.base.types import PathPoint, ProbeResult
from glacli.core.calibration import fit_temperature_nll
from glacli.core.combine import log_label_frequencies
from glacli.core.heads import apply_head
from glacli.core.lbfgs import Pair, lbfgs

WD_GRID = np.logspace(0.0, -7.0, 7 * 8 + 1)
"""Candidate penalties, strongest first, 8 per decade."""
COARSE_STRIDE = 8
"""Grid points between two coarse (per-decade) candidates."""

PLATEAU_NLL_DROP = 0.1
"""Relative fall of the validation NLL (from the strongest penalty's) that ends the near-zero plateau."""

ChunkSource = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def wd_to_c(wd: float, n_rows: int) -> float:
    """scikit-learn's ``C`` for the same problem: ``C = 1 / (wd N)``."""
    return 1.0 / (wd * n_rows)


def chunk_rows_for(n_features: int, n_classes: int, device: torch.device | str) -> int:
    """Rows per chunk so that the features, logits and probabilities of one chunk (float64 at most)
    fit the device's compute budget (:mod:`glacli.base.chunking`)."""
    return chunking.compute_rows(8 * (n_features + 2 * n_classes), torch.device(device).type)


@dataclass
class ProbeData:
    """Labelled rows for fitting or scoring a probe.

    ``chunks()`` yields ``(features [r, D], labels [r])`` pairs covering all rows in order, every
    time it is called (the solver makes one pass per function evaluation). ``labels`` holds all
    labels (int64, small) for class counts.
    """

    chunks: ChunkSource
    labels: torch.Tensor
    n_features: int
    n_classes: int

    @property
    def n_rows(self) -> int:
        return int(self.labels.numel())

    @classmethod
    def from_tensors(cls, features: torch.Tensor, labels: torch.Tensor, n_classes: int,
                     rows: int | None = None) -> ProbeData:
        """Rows held in memory (on any device); passes slice them without copying."""
        labels = labels.to(device=features.device, dtype=torch.long)
        rows = rows or chunk_rows_for(features.shape[1], n_classes, features.device)

        def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for start in range(0, features.shape[0], rows):
                yield features[start:start + rows], labels[start:start + rows]

        return cls(chunks, labels, int(features.shape[1]), n_classes)

    def second_moment(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``(1/N) sum_i [x_i, 1] [x_i, 1]^T`` [D + 1, D + 1], float64 on the CPU (one pass, in ``dtype`` on ``device``)."""
        total = torch.zeros(self.n_features + 1, self.n_features + 1, dtype=dtype, device=device)
        for features, _ in self.chunks():
            x = features.to(device=device, dtype=dtype)
            x = torch.cat([x, torch.ones(len(x), 1, dtype=dtype, device=device)], 1)
            total.addmm_(x.T, x)
        return total.to(torch.float64).cpu() / self.n_rows

    def log_label_frequencies(self) -> torch.Tensor:
        """``log pi_s``: log label frequencies of these rows (float64, CPU; -inf for an absent class)."""
        return torch.from_numpy(log_label_frequencies(self.labels.cpu().numpy(), self.n_classes))


@dataclass(frozen=True)
class SolverOptions:
    """How to run L-BFGS: where, in which precision, and when to stop.

    ``tol`` is relative: a fit stops when ``||grad L|| <= tol * wd * ||W||``, about a relative
    distance ``tol`` from the optimum (see :func:`fit_probe`); ``search_tol`` is the looser one
    used for the fits of the penalty search, where only the validation ranking matters.
    """

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    max_iter: int = 1000
    tol: float = 1e-4
    search_tol: float = 1e-2
    history: int = 20


PRECONDITIONER_RIDGE = 0.1
"""``mu`` of the preconditioner ``(S + mu I)^-1`` (:class:`Preconditioner`), relative to the rows' mean squared norm."""
PRECONDITIONER_KEEP = 0.01
"""Eigen-directions of ``S`` damped by less than this (``lam / (lam + mu)``) are left undamped."""


@dataclass(frozen=True)
class Preconditioner:
    """The plain probe's L-BFGS initial inverse Hessian ``(S + mu I)^-1``, the same for every class's
    ``[w_c, b_c]``, from the second moment ``S = (1/N) sum [x, 1] [x, 1]^T`` of the rows extended by a 1
    (the bias is the weight of that constant feature); computed once per training set, shared by
    every penalty.

    CLIP-like features are far from isotropic: their mean is most of every row (on CLIP ViT-B/32
    ImageNet features a direction with 13 times the variance of the next), and it couples with the
    bias. With the identity as its initial matrix L-BFGS steps along it as along the weak
    directions and relearns the difference for every penalty. ``mu`` of a tenth of the rows' mean
    squared norm damps the few strong directions only; L-BFGS's scaling ``s.y / y.H0 y`` supplies
    the magnitude. On those features (2 shots, 1,000 classes, warm-started search fits) it cut
    the iterations from 15, 40, 44 to 5, 17, 23 at ``wd`` 1e-4, 1e-5, 1e-6, where a ridge that grew
    with the penalty did worse at one end or the other. The anchored probe (no bias, started at
    the zero-shot head) gained nothing from it and is not preconditioned. The path changes, not the
    optimum (the problem is strictly convex).

    Held as ``(1/mu) (I - U diag(damping) U^T)`` over the eigenvectors ``U`` of ``S`` that it damps by
    ``PRECONDITIONER_KEEP`` or more: one application costs ``4 C D k`` for ``k`` of them.
    """

    vectors: torch.Tensor
    damping: torch.Tensor
    ridge: float

    @classmethod
    def of(cls, data: ProbeData, device: torch.device, dtype: torch.dtype) -> Preconditioner:
        moment = data.second_moment(device, dtype)
        ridge = PRECONDITIONER_RIDGE * float(moment.diagonal()[:-1].sum())
        values = torch.linalg.eigh(moment)
        damping = values.eigenvalues.clamp_min(0.0) / (values.eigenvalues.clamp_min(0.0) + ridge)
        kept = damping >= PRECONDITIONER_KEEP
        return cls(values.eigenvectors[:, kept].to(device, dtype), damping[kept].to(device, dtype), ridge)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``H0 v`` for a flat ``theta``: the weights [C, D] row-major, then the bias [C].

        Works on the weight block and the bias of ``v`` in place of the rows ``[w_c, b_c]`` (no copies
        into and out of a [C, D + 1] matrix): ``coef = (W U_w + b u_b^T) diag(damping)``, then
        ``W - coef U_w^T`` and ``b - coef u_b``, written into one new vector."""
        width = len(self.vectors)
        n_classes = len(v) // width
        weight, bias = v[: -n_classes].view(n_classes, width - 1), v[-n_classes:]
        coef = torch.addr(weight @ self.vectors[:-1], bias, self.vectors[-1]).mul_(self.damping)
        out = torch.empty_like(v)
        torch.addmm(weight, coef, self.vectors[:-1].T, alpha=-1.0, out=out[: -n_classes].view(n_classes, width - 1))
        torch.addmv(bias, coef, self.vectors[-1], alpha=-1.0, out=out[-n_classes:])
        return out.div_(self.ridge)


@dataclass(frozen=True)
class Curvature:
    """L-BFGS's final curvature pairs ``(s, y, 1 / s.y)`` of a fit at penalty ``wd`` (flat ``theta``:
    the displacement ``W - W_a`` [C, D] row-major, then the bias when it is learnt).

    The penalty is quadratic, so a pair of one penalty is an exact secant pair of another on the
    same rows: the data term's change of gradient along ``s`` does not depend on ``wd``, and the
    penalty's is ``wd s`` on the weights. :meth:`at` shifts ``y`` by ``(wd' - wd) s`` there. A fit
    warm-started from a neighbouring penalty's solution then starts with that fit's curvature
    instead of a scaled steepest-descent step. The optimum does not change (strictly convex); the path does.
    """

    wd: float
    pairs: tuple[Pair, ...]
    n_weights: int

    def at(self, wd: float) -> list[Pair]:
        """The pairs for penalty ``wd`` (new ``y`` tensors; ``s`` shared), dropping any whose ``s.y`` is no longer positive."""
        shifted = []
        for s, y, _ in self.pairs:
            y = y.clone()
            y[: self.n_weights].add_(s[: self.n_weights], alpha=wd - self.wd)
            sy = float(s @ y)
            if sy > 1e-12 * float(y @ y):
                shifted.append((s, y, 1.0 / sy))
        return shifted


@dataclass
class ProbeFit:
    """The solution at one penalty: ``weight`` [C, D], ``bias`` [C] (compute dtype and device), and
    the solver's final curvature (to start a neighbouring penalty's fit)."""

    weight: torch.Tensor
    bias: torch.Tensor
    wd: float
    loss: float
    iterations: int
    evaluations: int
    converged: bool
    curvature: Curvature | None = None


@dataclass
class PenaltySearch:
    best: ProbeFit
    points: list[PathPoint]

    @property
    def chosen(self) -> PathPoint:
        return max(self.points, key=PathPoint.key)


def probe_objective(data: ProbeData, displacement: torch.Tensor, bias: torch.Tensor, wd: float,
                    adjustment: torch.Tensor | None = None, anchor: torch.Tensor | None = None
                    ) -> tuple[float, torch.Tensor, torch.Tensor]:
    """``L`` of the module docstring at ``W = anchor + displacement``, with its gradients ``(dL/dW [C, D], dL/db [C])``.

    Without an anchor ``displacement`` is ``W``. Taking ``W - W_a`` rather than ``W`` keeps the
    penalty exact when ``W`` is close to a large anchor (float32 would round ``W - W_a`` to
    ``eps ||W_a||``). Computed in the dtype and on the device of ``displacement``; the loss is
    summed in float64.
    """
    device, dtype = displacement.device, displacement.dtype
    weight = displacement if anchor is None else anchor.to(device, dtype) + displacement
    shift = bias if adjustment is None else bias + adjustment.to(device, dtype)
    total = torch.zeros((), dtype=torch.float64, device=device)
    grad_w = torch.zeros_like(weight)
    grad_b = torch.zeros_like(bias)
    for features, labels in data.chunks():
        x = features.to(device=device, dtype=dtype, non_blocking=True)
        y = labels.to(device=device, non_blocking=True)
        logits = torch.addmm(shift, x, weight.T)
        true = logits.gather(1, y[:, None]).squeeze(1)
        # logsumexp and softmax from one exp, in place: e = exp(z - max z), lse = max z + log sum e,
        # softmax = e / sum e (torch.logsumexp followed by exp(z - lse) took the exp twice).
        top = logits.amax(1, keepdim=True)
        residual = logits.sub_(top).exp_()
        norm = residual.sum(1, keepdim=True)
        total += (norm.log().add_(top).squeeze(1) - true).sum(dtype=torch.float64)
        residual.div_(norm)
        residual[torch.arange(len(y), device=device), y] -= 1.0
        grad_w.addmm_(residual.T, x)
        grad_b += residual.sum(0)
    n = data.n_rows
    loss = float(total) / n + 0.5 * wd * float(torch.linalg.vector_norm(displacement, dtype=torch.float64)) ** 2
    return loss, grad_w.div_(n).add_(displacement, alpha=wd), grad_b.div_(n)


def fit_probe(data: ProbeData, wd: float, options: SolverOptions = SolverOptions(), *,
              anchor: tuple[torch.Tensor, torch.Tensor] | None = None,
              start: tuple[torch.Tensor, torch.Tensor] | None = None,
              adjustment: torch.Tensor | None = None, tol: float | None = None,
              preconditioner: Preconditioner | None = None, curvature: Curvature | None = None,
              on_evaluation: Callable[[float], None] | None = None) -> ProbeFit:
    """Minimise ``L`` at penalty ``wd > 0`` by full-batch L-BFGS over ``W - W_a`` (and ``b``).

    ``anchor`` is ``(W_a, b_a)``: the penalty pulls ``W`` towards ``W_a`` and the bias is held at
    ``b_a`` (not learnt: see :mod:`glacli.core.anchor`). Without one, ``W_a = 0`` and the bias is free.
    ``start`` is an initial ``(weight, bias)`` (a warm start or another head; an anchored fit uses
    its weight only); by default the anchor, and for the plain probe ``W = 0`` with
    ``b = log pi_s - adjustment``, the optimum as ``wd -> inf``.
    Stops when ``||grad L|| <= tol * wd * ||W - W_a||`` (default ``options.tol``): ``L`` is
    ``wd``-strongly convex in ``W``, so the distance to the optimum is then about ``tol`` times
    what the rows moved the head from its anchor, whatever the scale of the penalty -- an absolute
    gradient tolerance would stop warm starts at small penalties before they move. Also stops when
    no step decreases ``L`` at working precision (counted as converged) or after
    ``options.max_iter`` iterations (not converged). ``preconditioner`` is L-BFGS's initial inverse
    Hessian (by default computed from ``data``; a search passes the one it computed for all its penalties).
    ``curvature`` is another fit's on the same rows, anchor and adjustment (:class:`Curvature`): L-BFGS
    starts with its pairs, shifted to ``wd``.
    """
    if wd <= 0 or not math.isfinite(wd):
        raise ValueError(f"penalty must be positive, got {wd}")
    c, d = data.n_classes, data.n_features
    device, dtype = options.device, options.dtype
    if anchor is None:
        anchor_w = torch.zeros(c, d, dtype=dtype, device=device)
        bias0 = data.log_label_frequencies().clamp_min(-30.0)
        if adjustment is not None:
            bias0 = bias0 - adjustment.to(torch.float64).cpu()
        fixed_bias = None
    else:
        anchor_w, fixed_bias = anchor[0].to(device, dtype), anchor[1].to(device, dtype)
    weight0 = anchor_w if start is None else start[0].to(device, dtype)
    parts = [(weight0 - anchor_w).reshape(-1)]
    if fixed_bias is None:
        parts.append((bias0 if start is None else start[1]).reshape(-1).to(device, dtype))
    theta = torch.cat(parts)
    evaluations = 0

    def objective(point: torch.Tensor) -> tuple[float, torch.Tensor]:
        nonlocal evaluations
        bias = point[c * d:] if fixed_bias is None else fixed_bias
        loss, grad_w, grad_b = probe_objective(data, point[: c * d].view(c, d), bias, wd, adjustment,
                                               None if anchor is None else anchor_w)
        evaluations += 1
        if on_evaluation is not None:
            on_evaluation(loss)
        return loss, grad_w.reshape(-1) if fixed_bias is not None else torch.cat([grad_w.reshape(-1), grad_b])

    rtol = options.tol if tol is None else tol

    def small_enough(point: torch.Tensor, grad: torch.Tensor) -> bool:
        return float(grad.norm()) <= rtol * wd * float(point[: c * d].norm())

    if preconditioner is None:
        preconditioner = Preconditioner.of(data, device, dtype) if anchor is None else None
    pairs = [] if curvature is None else curvature.at(wd)
    theta, loss, iterations, converged = lbfgs(objective, theta, small_enough, options.max_iter, options.history,
                                               preconditioner, pairs)
    bias = theta[c * d:].clone() if fixed_bias is None else fixed_bias.clone()
    return ProbeFit(anchor_w + theta[: c * d].view(c, d), bias, wd, loss, iterations, evaluations, converged,
                    Curvature(wd, tuple(pairs), c * d))


def probe_logits(data: ProbeData, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Logits of all rows, [N, C] on the CPU (for validation sets: scoring and temperature)."""
    return torch.cat([apply_head(x, weight, bias).cpu() for x, _ in data.chunks()])


def probe_scores(data: ProbeData, weight: torch.Tensor, bias: torch.Tensor,
                 temperature: float = 1.0) -> tuple[float, float]:
    """Top-1 accuracy and mean NLL of ``(x W^T + b) / temperature`` on labelled rows."""
    correct = 0
    total = 0.0
    for x, y in data.chunks():
        logits = apply_head(x, weight, bias, temperature)
        y = y.to(logits.device)
        correct += int((logits.argmax(1) == y).sum())
        total += float(torch.nn.functional.cross_entropy(logits.to(torch.float64), y, reduction="sum"))
    return correct / data.n_rows, total / data.n_rows


def search_penalty(train: ProbeData, val: ProbeData, options: SolverOptions = SolverOptions(), *,
                   anchor: tuple[torch.Tensor, torch.Tensor] | None = None,
                   start: tuple[torch.Tensor, torch.Tensor] | None = None,
                   adjustment: torch.Tensor | None = None, grid: np.ndarray = WD_GRID,
                   coarse_stride: int = COARSE_STRIDE, patience: int = 1, preconditioner: Preconditioner | None = None,
                   on_fit: Callable[[PathPoint], None] | None = None,
                   on_evaluation: Callable[[float], None] | None = None) -> PenaltySearch:
    """Choose ``wd`` from ``grid`` (strongest first) on ``val``: coarse warm-started path, then refinement.

    Returns every evaluated point and the fit of the best one (see the module docstring for the
    protocol). Search fits stop at ``options.search_tol``.
    """
    points: dict[int, PathPoint] = {}
    if preconditioner is None and anchor is None:
        preconditioner = Preconditioner.of(train, options.device, options.dtype)
    best_index: int | None = None
    best_fit: ProbeFit | None = None
    solutions: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def evaluate(index: int, warm: tuple[torch.Tensor, torch.Tensor] | None, stage: str,
                 curvature: Curvature | None = None) -> ProbeFit:
        nonlocal best_index, best_fit
        fit = fit_probe(train, float(grid[index]), options, anchor=anchor, start=warm, adjustment=adjustment,
                        tol=options.search_tol, preconditioner=preconditioner, curvature=curvature,
                        on_evaluation=on_evaluation)
        accuracy, nll = probe_scores(val, fit.weight, fit.bias)
        point = PathPoint(fit.wd, accuracy, nll, fit.iterations, fit.loss, fit.converged, stage)
        points[index] = point
        solutions[index] = (fit.weight, fit.bias)
        if best_index is None or point.key() > points[best_index].key():
            best_index, best_fit = index, fit
        if on_fit is not None:
            on_fit(point)
        return fit

    def bracketed_start(index: int, centre: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The start of a refinement fit: the solutions of the centre and of the nearest evaluated
        penalty beyond ``index`` interpolated linearly in ``log wd`` (the centre's alone where none lies beyond)."""
        beyond = [j for j in solutions if (j - index) * (centre - index) < 0]
        if not beyond:
            return solutions[centre]
        far = min(beyond, key=lambda j: abs(j - index))
        share = (index - centre) / (far - centre)
        return (torch.lerp(solutions[centre][0], solutions[far][0], share),
                torch.lerp(solutions[centre][1], solutions[far][1], share))

    warm, curvature = start, None
    for index in range(0, len(grid), coarse_stride):
        if index >= 2 * coarse_stride:
            (w1, b1), (w2, b2) = solutions[index - coarse_stride], solutions[index - 2 * coarse_stride]
            warm = (torch.lerp(w2, w1, 2.0), torch.lerp(b2, b1, 2.0))
        fit = evaluate(index, warm, "coarse", curvature)
        warm, curvature = (fit.weight, fit.bias), fit.curvature
        assert best_index is not None
        off_plateau = anchor is None and points[index].val_nll < (1 - PLATEAU_NLL_DROP) * points[0].val_nll
        if off_plateau and (index - best_index) // coarse_stride >= patience:
            break
    span = coarse_stride // 2
    while span >= 1:
        assert best_index is not None and best_fit is not None
        centre, centre_fit = best_index, best_fit
        for index in (centre - span, centre + span):
            if 0 <= index < len(grid) and index not in points:
                evaluate(index, bracketed_start(index, centre), "refine", centre_fit.curvature)
        span //= 2
    assert best_fit is not None
    return PenaltySearch(best_fit, [points[i] for i in sorted(points)])


def planned_fits(grid: np.ndarray = WD_GRID, coarse_stride: int = COARSE_STRIDE) -> int:
    """An upper bound on the fits :func:`search_penalty` makes (for progress displays)."""
    levels = int(math.log2(coarse_stride)) if coarse_stride > 1 else 0
    return len(range(0, len(grid), coarse_stride)) + 2 * levels


def train_probe(train: ProbeData, *, val: ProbeData | None = None, wd: float | None = None,
                options: SolverOptions = SolverOptions(), init: tuple[torch.Tensor, torch.Tensor] | None = None,
                anchor: tuple[torch.Tensor, torch.Tensor] | None = None, balanced: bool = False,
                grid: np.ndarray = WD_GRID,
                on_fit: Callable[[PathPoint], None] | None = None,
                on_evaluation: Callable[[float], None] | None = None) -> ProbeResult:
    """Fit a linear head: at ``wd``, or (``wd=None``) at the penalty chosen on ``val``.

    With ``val``, the final head is refitted to ``options.tol`` and its temperature calibrated
    on ``val`` by NLL; without, the temperature is 1. ``balanced`` trains with the logit-adjusted
    loss (``a = log pi_s``). ``anchor`` is ``(W_a, b_a)`` for the anchored penalty
    ``wd/2 ||W - W_a||^2``; ``init`` is a starting ``(weight, bias)`` (by default the anchor, or zero).
    """
    if wd is None and val is None:
        raise ValueError("either a penalty or a validation set is needed")
    adjustment = train.log_label_frequencies() if balanced else None
    path: list[PathPoint] = []
    start, curvature = init, None
    preconditioner = Preconditioner.of(train, options.device, options.dtype) if anchor is None else None
    if wd is None:
        assert val is not None
        search = search_penalty(train, val, options, anchor=anchor, start=init, adjustment=adjustment, grid=grid,
                                preconditioner=preconditioner, on_fit=on_fit, on_evaluation=on_evaluation)
        path, wd = search.points, search.chosen.wd
        start, curvature = (search.best.weight, search.best.bias), search.best.curvature
    fit = fit_probe(train, wd, options, anchor=anchor, start=start, adjustment=adjustment, preconditioner=preconditioner,
                    curvature=curvature, on_evaluation=on_evaluation)
    result = ProbeResult(fit.weight.float().cpu().numpy(), fit.bias.float().cpu().numpy(), wd=wd,
                         temperature=1.0, iterations=fit.iterations, final_loss=fit.loss,
                         converged=fit.converged, path=path)
    if val is not None:
        logits = probe_logits(val, fit.weight, fit.bias)
        labels = val.labels.cpu()
        temperature = fit_temperature_nll(logits, labels)
        accuracy, nll_before = probe_scores(val, fit.weight, fit.bias)
        nll_after = float(torch.nn.functional.cross_entropy(logits.to(torch.float64) / temperature, labels))
        result = replace(result, temperature=temperature, val_accuracy=accuracy,
                         val_nll=nll_after, val_nll_uncalibrated=nll_before)
    return result
