"""gla: Generalized Logit Adjustment for CLIP classifiers.

``import glacli as gla`` gives the Python API (:mod:`glacli.api`): :func:`estimate_prior`,
:func:`debias`, :func:`combine`, :func:`fit_temperature`, :func:`estimate_target`, :func:`fit_probe`,
:func:`evaluate`, :func:`load` and :func:`save`. They are loaded on first use, so that importing the
package (and starting the ``gla`` command, which imports it) stays cheap.
"""
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "GlaInputError", "Head", "Prior", "PriorFit", "RowRecord", "TargetFit",
    "combine", "debias", "estimate_prior", "estimate_target", "evaluate", "fit_probe", "fit_temperature",
    "load", "save",
]


def __getattr__(name: str) -> Any:
    """The API's names, imported from :mod:`glacli.api` when first asked for."""
    if name in __all__:
        from glacli import api

        return getattr(api, name)
    raise AttributeError(f"module 'glacli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
