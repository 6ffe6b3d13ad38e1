"""The defaults of ``gla fit`` that its help shows, apart from the fitting services (which import torch), so
that ``gla fit --help`` starts without torch. The services take them from here."""
from __future__ import annotations

DEFAULT_MEMORY_GIB = 8.0
"""Features larger than this (in the compute dtype) are streamed from disk on every pass."""
DEFAULT_TOL = 1e-4
"""The final fit's relative tolerance: ``glacli.core.probe.SolverOptions.tol`` (a test keeps them equal)."""
DEFAULT_TEMPLATE = "simple"
DEFAULT_LEARN = "context+class"
DEFAULT_EPOCHS = 50
"""The prompt learner's template, residuals and epochs."""
