"""The records that cross layers: plain dataclasses over numpy arrays (no I/O, no torch, no CLI).

What a gla file holds (:class:`Head`, :class:`Prior`), what a data source lists (:class:`Rows` and
its locators), how a service reports while it works (:class:`Reporter`) and the results the math
and the services hand upward (:class:`PriorEstimate`, :class:`PathPoint`, :class:`ProbeResult`,
:class:`Metrics`, :class:`Record`, :class:`ExtractResult`, :class:`ImportReport`,
:class:`ExportReport`). Every layer may import this module; it imports only numpy and the
standard library, so that reading a type never pulls in h5py, torch or the command line.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HEAD_TYPES = ("zeroshot", "linear", "anchored", "prompt", "finetuned", "wise-ft")
PROMPT_PLACEHOLDER = "{}"
"""Where the class name goes in a prompt template (read by :mod:`glacli.io.templates`, filled by
:mod:`glacli.core.zeroshot`)."""


# --------------------------------------------------------------------------- what files hold


@dataclass
class Head:
    """A linear classifier on features: ``logits = (features @ weight.T + bias) / temperature``.

    Zero-shot and linear-probe heads are the same object; ``head_type`` says which.
    """

    weight: np.ndarray
    bias: np.ndarray
    classnames: list[str]
    head_type: str
    temperature: float = 1.0
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def gla_id(self) -> str:
        return str(self.attrs.get("gla_id", ""))

    def logits(self, features: Any) -> np.ndarray:
        """``(features @ weight.T + bias) / temperature``: [N, D] features (numpy, or a CPU tensor) to
        [N, C] logits, computed in the weight's dtype."""
        x = np.asarray(features, dtype=self.weight.dtype)
        return (x @ self.weight.T + self.bias) / self.temperature


@dataclass
class Prior:
    """A label prior (``q`` of the zero-shot model, or any class distribution) and how it was obtained.

    ``log_prior`` is the exact solution; ``prior`` is its ``exp``, which may underflow to 0 for a
    class the data put below ``exp(-745)``. Give either; the other is derived.
    """

    prior: np.ndarray | None
    classnames: list[str]
    temperature: float
    method: str
    converged: bool = True
    max_moment_gap: float = 0.0
    iterations: int = 0
    attrs: dict[str, Any] = field(default_factory=dict)
    log_prior: np.ndarray | None = None
    logits_temperature: float = 1.0
    """The temperature already applied to the logits ``q`` was fitted on (their raw scale is values x this)."""

    def __post_init__(self) -> None:
        if self.log_prior is None:
            with np.errstate(divide="ignore"):
                self.log_prior = np.log(np.asarray(self.prior, dtype=np.float64))
        else:
            self.log_prior = np.asarray(self.log_prior, dtype=np.float64)
        if self.prior is None:
            self.prior = np.exp(self.log_prior)

    @property
    def gla_id(self) -> str:
        return str(self.attrs.get("gla_id", ""))


# --------------------------------------------------------------------------- what sources list


@dataclass(frozen=True)
class TarMember:
    """One entry of an uncompressed tar shard, read by offset so workers need no tar index."""

    shard: str
    offset: int
    size: int


@dataclass(frozen=True)
class InlineText:
    """A row whose text is written in the manifest itself, not in a file."""

    text: str


Locator = str | TarMember | InlineText
"""What a loader reads for one row: an absolute file path, a tar member or an inline text (a
source may add its own locator with a ``read_bytes()`` method, as torchvision datasets do)."""


@dataclass
class Rows:
    """The rows of a source, in extraction order, and its classes."""

    locators: list[Locator]
    ids: list[str]
    labels: np.ndarray
    classnames: list[str]
    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    """What a features file records about the source (``source``, ``source_kind``, ``split``...)."""
    warnings: list[str] = field(default_factory=list)
    input_kind: str = "image"
    """What the locators hold, matched against the encoder's ``input_kind``."""

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, indices: np.ndarray) -> Rows:
        """The rows at ``indices`` (kept in the given order)."""
        return Rows([self.locators[i] for i in indices], [self.ids[i] for i in indices], self.labels[indices],
                    self.classnames, self.kind, dict(self.attrs), list(self.warnings), self.input_kind)

    def digest(self) -> str:
        """A fingerprint of ids, labels and classes (and inline texts, whose ids may be bare row
        numbers): two listings with the same digest are the same rows."""
        h = hashlib.sha256()
        h.update("\n".join([*self.classnames, "\0", *self.ids]).encode("utf-8"))
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        for locator in self.locators:
            if isinstance(locator, InlineText):
                h.update(hashlib.sha256(locator.text.encode("utf-8", errors="replace")).digest())
        return h.hexdigest()


# --------------------------------------------------------------------------- reporting


def _ignore(*args: Any, **kwargs: Any) -> None:
    """The default of every :class:`Reporter` callback: say nothing."""


@dataclass
class Reporter:
    """How a service talks to the command that runs it, without knowing about consoles.

    ``message`` and ``warning`` are one-line notes for stderr; ``start(description, total, unit=None)``
    opens a progress count (with ``unit``, a rate such as img/s is shown) and
    ``advance(n, description=None)`` moves it.
    """

    message: Callable[[str], None] = _ignore
    warning: Callable[[str], None] = _ignore
    start: Callable[..., None] = _ignore
    advance: Callable[..., None] = _ignore


# --------------------------------------------------------------------------- results


@dataclass
class PriorEstimate:
    """The fitted prior and how the solver got there (what :func:`glacli.core.prior.estimate_prior` returns)."""

    log_prior: np.ndarray
    """``log q``, float64 [C], normalised so that ``q`` sums to 1 (finite even where ``q`` underflows)."""
    temperature: float
    iterations: int
    """Newton iterations over all rows (with ``nll``: the steps in ``b`` at each trial ``T``, the
    steps in ``T`` and the joint steps that confirm the end point)."""
    max_moment_gap: float
    """``max_k |f_k - mean_i softmax(z_i / T - log q + log f)_k|`` at the solution."""
    converged: bool
    objective: float | None
    """Mean cross-entropy of ``softmax(z / T - log q + log f)`` on the labels; None without labels."""
    temperature_gradient: float | None = None
    """``dL/dbeta`` at the solution when T was fitted (``nll``), else None."""
    moment_gaps: np.ndarray | None = None
    """``f_k - mean_i p_ik`` per class, float64 [C]: where a fit that did not converge falls short."""
    passes: int = 0
    """Passes over the rows (float32 and float64), for benchmarks."""

    @property
    def prior(self) -> np.ndarray:
        return np.exp(self.log_prior)


@dataclass
class PathPoint:
    """One evaluated penalty of the probe's search, with its validation scores."""

    wd: float
    val_accuracy: float
    val_nll: float
    iterations: int
    loss: float
    converged: bool
    stage: str

    def key(self) -> tuple[float, float]:
        """Larger is better: accuracy first, then lower NLL."""
        return self.val_accuracy, -self.val_nll


@dataclass
class ProbeResult:
    """A fitted linear head and how it was chosen: what ``gla fit`` writes and reports."""

    weight: np.ndarray
    bias: np.ndarray
    wd: float
    temperature: float
    iterations: int
    final_loss: float
    converged: bool
    val_accuracy: float | None = None
    val_nll: float | None = None
    val_nll_uncalibrated: float | None = None
    path: list[PathPoint] = field(default_factory=list)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` elementwise, NaN where the denominator is 0."""
    out = np.full(denominator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


@dataclass
class Reliability:
    """Reliability-diagram bins: equal-width confidence intervals ``(edges[b], edges[b+1]]``."""

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    """Mean max-probability of the samples in each bin (NaN where a bin is empty)."""
    accuracy: np.ndarray
    """Top-1 accuracy of the samples in each bin (NaN where a bin is empty)."""


@dataclass
class Metrics:
    """Everything :class:`glacli.core.metrics.MetricAccumulator` measures on one set of logits."""

    n_samples: int
    k: int
    top1: float
    topk: float
    mean_per_class: float
    nll: float
    ece: float
    class_correct: np.ndarray
    """[C] int64: top-1 correct test samples per class."""
    class_count: np.ndarray
    """[C] int64: test samples per class."""
    reliability: Reliability

    @property
    def class_accuracy(self) -> np.ndarray:
        """[C] top-1 accuracy per class; NaN for classes without test samples."""
        return ratio(self.class_correct, self.class_count)

    def group_accuracy(self, classes: np.ndarray) -> float:
        """Top-1 accuracy over the test samples whose label is in ``classes``: pooled, not a mean of
        classes (NaN if none)."""
        count = int(self.class_count[classes].sum())
        return float(self.class_correct[classes].sum() / count) if count else float("nan")


@dataclass
class Record:
    """One evaluated file of an evaluate results document: its keys (``method`` and the document's
    tags), its scalar metrics, and the document it came from; with a bootstrap, the interval of
    each metric (``ci``) and the paired differences to the document's ``baseline``."""

    keys: dict[str, Any]
    metrics: dict[str, float | None]
    source: str
    ci: dict[str, Any] = field(default_factory=dict)
    vs_baseline: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None


@dataclass
class ExtractResult:
    """What one ``extract`` run did."""

    path: Path
    n_rows: int = 0
    n_skipped: int = 0
    resumed_from: int = 0
    encoded: int = 0
    seconds: float = 0.0
    already_complete: bool = False


@dataclass
class ImportReport:
    """What an import did, for the command to show."""

    source: str
    output: str
    kind: str
    n_rows: int = 0
    n_cols: int = 0
    n_classes: int = 0
    classnames_from: str = ""
    labels_from: str = ""
    labelled_rows: int = 0
    ids_from: str = ""
    notes: list[str] = field(default_factory=list)
    head_type: str = ""
    """Heads: the ``head_type`` written."""


@dataclass
class ExportReport:
    """What an export wrote."""

    source: str
    output: str
    kind: str
    shape: tuple[int, ...]
    entries: list[str]


@dataclass
class Evaluation:
    """What ``evaluate`` measured: the class groups and the results document (the evaluate JSON, as
    JSON values: NaN is None)."""

    names: list[str]
    groups: dict[str, np.ndarray]
    document: dict[str, Any]
    n_samples: int
    n_classes: int
