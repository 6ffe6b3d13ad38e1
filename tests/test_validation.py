"""glacli.base.validation: each problem has one message, whichever file, option or command finds it."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_one_line_error
from synth import class_features, write_features

from glacli.base.errors import GlaInputError
from glacli.base.validation import require_count, require_positive, require_prior


def test_prior_refuses_non_positive_and_unnormalised(tmp_path):
    for values, message in (([0.5, 0.5, 0.0], "positive prior"), ([0.5, 0.6, 0.1], "sums to 1.2")):
        with pytest.raises(GlaInputError, match=message):
            require_prior(np.array(values), tmp_path / "q.h5")


@pytest.mark.parametrize("value", [0, -1.5, "nan", "inf", "lots", None])
def test_positive_numbers(value):
    with pytest.raises(GlaInputError, match=rf"^--tol: expected a positive number, got {value!r}$"):
        require_positive(value, "--tol")
    assert require_positive("2.5", "--tol") == 2.5


def test_counts():
    with pytest.raises(GlaInputError, match=r"^--batch-size: expected a positive integer, got 0$"):
        require_count(0, "--batch-size")
    with pytest.raises(GlaInputError, match=r"^--workers: expected an integer of at least 0, got -1$"):
        require_count(-1, "--workers", minimum=0)
    assert require_count(0, "--workers", minimum=0) == 0


def test_a_class_without_rows_is_named_with_what_needs_it(gla, tmp_path):
    x, y = class_features(60, 0.5, seed=3)
    train = write_features(tmp_path / "train.h5", x[y != 2], y[y != 2])
    fit = gla("fit", train, "--wd", "1e-3", "-o", tmp_path / "head.h5")
    assert_one_line_error(fit, f"{train}: class 'class 2' has no rows; a linear probe needs every class")


def test_option_checks_run_before_any_model_is_loaded(gla, tmp_path):
    """A bad --batch-size or --dtype is refused before the (here nonexistent) model would load."""
    (tmp_path / "images" / "cat").mkdir(parents=True)
    common = ["extract", tmp_path / "images", "-o", tmp_path / "f.h5", "--model", "none", "--pretrained", "none"]
    assert_one_line_error(gla(*common, "--batch-size", "0"), "--batch-size: expected a positive integer, got 0")
    assert_one_line_error(gla(*common, "--dtype", "int8"), "--dtype: expected one of float16, float32, got 'int8'")
