"""``gla evaluate``: the JSON contract, the numbers, the figure, and one-line errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
from scipy.special import log_softmax
from synth import biased_logits, classnames, write_logits_file

from glacli.base import chunking
from glacli.base.types import Prior
from glacli.core import bootstrap
from glacli.io.paramfile import read_prior, write_prior
from glacli.io.rowfile import read_rows, write_features

C = 12
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def files(tmp_path: Path) -> dict:
    """Zero-shot logits with a known bias, their debiased version, the prior, and training features."""
    z, y, q = biased_logits(40, C, seed=1)
    rng = np.random.default_rng(1)
    train_labels = np.repeat(np.arange(C), [150, 120, 101, 100, 60, 20, 19, 5, 1, 200, 30, 10])
    feats = rng.normal(size=(len(train_labels), 6))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    paths = {
        "zs": write_logits_file(tmp_path / "zs.h5", z, y),
        "debiased": write_logits_file(tmp_path / "debiased.h5", z - np.log(q), y),
        "prior": tmp_path / "prior.h5",
        "train": tmp_path / "train.h5",
    }
    write_prior(paths["prior"], Prior(q, classnames(C), 1.0, "test"))
    write_features(paths["train"], feats, train_labels, [f"t{i}" for i in range(len(feats))], classnames(C))
    return {**paths, "z": z, "y": y, "q": q, "train_labels": train_labels, "dir": tmp_path}


def top1(z: np.ndarray, y: np.ndarray) -> float:
    return float((z.argmax(1) == y).mean())


def test_json_schema_and_numbers(gla, files):
    out = files["dir"] / "res.json"
    r = gla("evaluate", files["zs"], files["debiased"], "--prior", files["prior"], "--train", files["train"],
            "--name", "zero-shot", "--name", "debiased", "--tag", "shots=4", "--tag", "seed=1",
            "--tag", "data=synth", "--json-out", out, "--device", "cpu")
    assert r.code == 0, r.err
    assert "zero-shot" in r.out and "top-1" in r.out
    doc = json.loads(out.read_text())
    assert doc["schema"] == "gla-evaluate" and doc["schema_version"] == 2
    assert doc["tags"] == {"shots": 4, "seed": 1, "data": "synth"}
    assert doc["n_samples"] == len(files["y"]) and doc["n_classes"] == C
    assert doc["classnames"] == classnames(C) and doc["top_k"] == 5 and doc["ece_bins"] == 15
    assert doc["prior"]["gla_id"] == read_prior(files["prior"]).gla_id
    np.testing.assert_allclose(doc["prior"]["q"], files["q"])
    assert doc["train"]["counts"] == np.bincount(files["train_labels"], minlength=C).tolist()
    shot_groups = {"many_shot", "medium_shot", "few_shot"}
    assert set(doc["groups"]) == {"q_head", "q_medium", "q_tail"} | shot_groups \
        | {g + "_class_mean" for g in shot_groups}
    assert doc["train"]["many_shot_above"] == 100 and doc["train"]["few_shot_below"] == 20
    assert doc["bootstrap"] is None and doc["target_prior"] is None
    assert doc["groups"]["many_shot"]["classes"] == [0, 1, 2, 9]
    assert doc["groups"]["medium_shot"]["classes"] == [3, 4, 5, 10]
    assert doc["groups"]["few_shot"]["classes"] == [6, 7, 8, 11]
    order = np.argsort(-files["q"], kind="stable")
    assert doc["groups"]["q_head"]["classes"] == order[:4].tolist()
    assert doc["groups"]["q_tail"]["classes"] == order[8:].tolist()

    z, y = files["z"], files["y"]
    for result, logits, name, path in zip(doc["results"], (z, z - np.log(files["q"])),
                                          ("zero-shot", "debiased"), (files["zs"], files["debiased"])):
        z32 = logits.astype(np.float32).astype(np.float64)  # what the file stores
        with read_rows(path, "logits") as f:
            assert result["gla_id"] == f.gla_id
        assert result["name"] == name and result["path"] == str(path)
        m = result["metrics"]
        assert m["top1"] == pytest.approx(top1(z32, y), abs=1e-12)
        assert m["nll"] == pytest.approx(-log_softmax(z32, axis=1)[np.arange(len(y)), y].mean(), rel=1e-9)
        correct = z32.argmax(1) == y
        head = np.isin(y, order[:4])
        assert m["q_head"] == pytest.approx(correct[head].mean())
        assert m["few_shot"] == pytest.approx(correct[np.isin(y, [6, 7, 8, 11])].mean())
        # the paper's shot_acc: the mean of the few-shot classes' accuracies, not pooled
        assert m["few_shot_class_mean"] == pytest.approx(np.mean([correct[y == c].mean() for c in (6, 7, 8, 11)]))
        assert "ci" not in result and "vs_baseline" not in result
        per_class = result["per_class"]
        assert per_class["count"] == np.bincount(y, minlength=C).tolist()
        assert per_class["correct"] == np.bincount(y[correct], minlength=C).tolist()
        assert len(per_class["accuracy"]) == C
        assert sum(result["reliability"]["count"]) == len(y) and len(result["reliability"]["edges"]) == 16
    zs, deb = (res["metrics"] for res in doc["results"])
    assert deb["q_tail"] > zs["q_tail"]  # debiasing helps the classes q deems unlikely


def test_json_to_stdout_and_default_names(gla, files):
    r = gla("evaluate", files["zs"], files["debiased"], "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert [res["name"] for res in doc["results"]] == ["zs", "debiased"]
    assert doc["prior"] is None and doc["train"] is None and doc["groups"] == {} and doc["tags"] == {}
    assert set(doc["results"][0]["metrics"]) == {"top1", "top5", "mean_per_class", "nll", "ece"}


def test_empty_group_is_null_in_json(gla, files, tmp_path):
    # Only classes 0 and 1 have test samples: the q groups without them are null, not NaN.
    z = np.random.default_rng(0).normal(size=(20, C))
    y = np.repeat([0, 1], 10)
    path = write_logits_file(tmp_path / "two.h5", z, y)
    r = gla("evaluate", path, "--prior", files["prior"], "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    values = doc["results"][0]["metrics"]
    for group in ("q_head", "q_medium", "q_tail"):
        tested = {0, 1} & set(doc["groups"][group]["classes"])
        assert (values[group] is None) == (not tested), group
    assert doc["results"][0]["per_class"]["accuracy"][5] is None


def test_top_k_is_named_by_its_k_below_five_classes(gla, tmp_path):
    z, y, _ = biased_logits(10, 3, seed=2)
    r = gla("evaluate", write_logits_file(tmp_path / "three.h5", z, y), "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["top_k"] == 3 and "top5" not in doc["results"][0]["metrics"]
    assert doc["results"][0]["metrics"]["top3"] == 1.0  # the 3 largest of 3 logits hold every label
    (tmp_path / "res.json").write_text(r.out)
    r = gla("report", tmp_path / "res.json", "-o", tmp_path / "rep.md", "--metric", "top3")
    assert r.code == 0, r.err
    assert "| three | 100.00 |" in (tmp_path / "rep.md").read_text()


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """A centred moving average, truncated at the ends, computed point by point (the reference)."""
    half_low, half_high = (window - 1) // 2, window // 2
    return np.array([values[max(0, k - half_low):k + half_high + 1].mean() for k in range(len(values))])


@pytest.mark.parametrize("ranking", ["prior", "train", "none"])
def test_plot_draws_per_class_accuracy_by_rank(gla, files, drawn, ranking):
    """The curves are each file's per-class accuracy (numpy, from the logits) in rank order of q or of the
    training counts, smoothed over 5% of the classes; the reliability points are the bins' accuracy."""
    png = files["dir"] / "fig.png"
    extra = {"prior": ["--prior", files["prior"]], "train": ["--train", files["train"]], "none": []}[ranking]
    r = gla("evaluate", files["zs"], files["debiased"], *extra, "--plot", png)
    assert r.code == 0, r.err
    assert png.read_bytes()[:8] == PNG_MAGIC and not list(files["dir"].glob(".fig.png.tmp-*"))
    (fig,) = drawn
    order = {"prior": np.argsort(-files["q"], kind="stable"),
             "train": np.argsort(-np.bincount(files["train_labels"]), kind="stable"), "none": np.arange(C)}[ranking]
    z, y = files["z"], files["y"]
    left = fig.axes[0]
    for line, logits in zip(left.get_lines(), (z, z - np.log(files["q"]))):
        per_class = np.array([(logits[y == k].argmax(1) == k).mean() for k in range(C)])
        np.testing.assert_allclose(line.get_ydata(), 100 * per_class[order], atol=1e-9)  # 5% of 12: window 1
    assert "moving average" not in left.get_ylabel()  # a window of one class is no average
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["zs", "debiased"]


def test_plot_smooths_over_five_percent_of_many_classes(tmp_path, drawn):
    from glacli.base.types import Reliability
    from glacli.io.plots import evaluation_figure
    accuracy = np.random.default_rng(0).uniform(size=100)
    reliability = Reliability(confidence=np.array([0.5]), accuracy=np.array([0.5]), count=np.array([1]),
                              edges=np.array([0.0, 1.0]))
    evaluation_figure(tmp_path / "f.png", ["m"], [accuracy], np.arange(100), "class", [reliability])
    (line,) = drawn[0].axes[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), 100 * smoothed(accuracy, 5), atol=1e-9)
    assert "moving average over 5 classes" in drawn[0].axes[0].get_ylabel()


def test_same_result_whatever_the_chunking(gla, files, monkeypatch):
    r1 = gla("evaluate", files["zs"], "--json")
    monkeypatch.setattr(chunking, "compute_rows", lambda row_bytes, device_type="cpu": 5)  # five rows per chunk
    r2 = gla("evaluate", files["zs"], "--json")
    m1, m2 = (json.loads(r.out)["results"][0]["metrics"] for r in (r1, r2))
    assert m1 == pytest.approx(m2, rel=1e-12)


# ------------------------------------------------------------------ bootstrap, target prior, shot thresholds


def test_bootstrap_intervals_are_paired_reproducible_and_wired(gla, files, monkeypatch):
    """A copy of the baseline differs from it by exactly 0 on every resample (the resamples are shared);
    the intervals do not depend on chunk or block sizes; top-1's interval is the percentile of
    ``counts @ correct / N`` over the resamples the service draws."""
    copy = shutil.copy(files["zs"], files["dir"] / "zs_copy.h5")
    args = ["evaluate", files["zs"], files["debiased"], copy, "--prior", files["prior"], "--train", files["train"],
            "--name", "zero-shot", "--name", "debiased", "--name", "copy", "--bootstrap", "200",
            "--bootstrap-seed", "4", "--baseline", "zero-shot", "--json", "--device", "cpu"]
    r = gla(*args)
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["bootstrap"] == {"resamples": 200, "seed": 4, "confidence": 0.95, "sampling": "stratified",
                                "interval": "percentile", "baseline": "zero-shot"}
    zs, deb, twin = doc["results"]
    assert "vs_baseline" not in zs
    for result in doc["results"]:
        assert set(result["ci"]) == set(result["metrics"])
        for key, (low, high) in result["ci"].items():
            assert low <= high, key
        assert result["ci"]["top1"][0] < result["metrics"]["top1"] < result["ci"]["top1"][1]
    assert twin["ci"] == zs["ci"]
    assert all(entry == {"difference": 0.0, "ci": [0.0, 0.0]} for entry in twin["vs_baseline"].values())
    for key, entry in deb["vs_baseline"].items():
        assert entry["difference"] == pytest.approx(deb["metrics"][key] - zs["metrics"][key], abs=1e-12), key
        assert entry["ci"][0] < entry["ci"][1], key  # the methods differ, so resamples disagree

    z32 = files["z"].astype(np.float32).astype(np.float64)
    correct = (z32.argmax(1) == files["y"]).astype(np.float64)
    counts = bootstrap.resample_counts(bootstrap.Design.of(files["y"], C), 0, 200, seed=4, stratified=True)
    expected = np.quantile(counts @ correct / len(correct), [0.025, 0.975])
    np.testing.assert_allclose(zs["ci"]["top1"], expected, rtol=1e-12)

    monkeypatch.setattr(chunking, "compute_rows", lambda row_bytes, device_type="cpu": 5)
    again = json.loads(gla(*args).out)
    for res, ref in zip(again["results"], doc["results"]):  # equal up to float64 summation order
        assert {k: pytest.approx(v, rel=1e-12) for k, v in ref["ci"].items()} == res["ci"]
    plain = json.loads(gla(*args, "--plain").out)
    assert plain["bootstrap"]["sampling"] == "plain" and plain["results"][0]["ci"] != zs["ci"]


def test_table_shows_half_widths_and_marks_differences(gla, files):
    r = gla("evaluate", files["zs"], files["debiased"], "--prior", files["prior"], "--bootstrap", "100",
            "--baseline", "zs", "--device", "cpu")
    assert r.code == 0, r.err
    assert "±" in r.out and "half the width of the 95% percentile interval" in r.out
    assert "difference to zs" in r.out and "excludes 0" in r.out
    tail_row = next(line for line in r.out.splitlines() if line.startswith("tail") and "[" in line)
    assert "*" in tail_row  # debiasing lifts the tail third by far more than its interval's width


def test_target_prior_error_against_the_test_labels(gla, files, tmp_path):
    estimate = np.full(C, 1 / C)
    target = tmp_path / "target.h5"
    write_prior(target, Prior(estimate, classnames(C), 1.0, "mlls"))
    r = gla("evaluate", files["zs"], "--target-prior", target, "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)["target_prior"]
    true = np.bincount(files["y"], minlength=C) / len(files["y"])
    assert info["method"] == "mlls" and info["true"] == pytest.approx(true.tolist())
    assert info["l1"] == pytest.approx(np.abs(estimate - true).sum())
    assert info["max_abs_error"] == pytest.approx(np.abs(estimate - true).max())
    r = gla("evaluate", files["zs"], "--target-prior", target)
    assert f"L1 {np.abs(estimate - true).sum():.4f}" in r.out
    assert_one_line_error(gla("evaluate", files["zs"], "--target-prior", files["prior"]),
                          "prior.h5", "pre-training prior q")
    assert_one_line_error(gla("evaluate", files["zs"], "--prior", target), "target.h5", "--target-prior")


def test_shot_thresholds_are_options(gla, files):
    r = gla("evaluate", files["zs"], "--train", files["train"], "--many-shot-above", "50",
            "--few-shot-below", "10", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    # training images per class: 150 120 101 100 60 20 19 5 1 200 30 10
    assert doc["groups"]["many_shot"]["classes"] == [0, 1, 2, 3, 4, 9]
    assert doc["groups"]["medium_shot"]["classes"] == [5, 6, 10, 11]
    assert doc["groups"]["few_shot_class_mean"]["classes"] == [7, 8]
    assert "more than 50" in doc["groups"]["many_shot"]["rule"]
    assert doc["train"]["many_shot_above"] == 50 and doc["train"]["few_shot_below"] == 10


def test_plot_group_bars_show_the_json_values_on_an_axis_that_shows_their_differences(gla, files, drawn):
    png = files["dir"] / "ci.png"
    out = files["dir"] / "ci.json"
    r = gla("evaluate", files["zs"], files["debiased"], "--prior", files["prior"], "--bootstrap", "30",
            "--plot", png, "--json-out", out)
    assert r.code == 0, r.err
    doc = json.loads(out.read_text())
    groups = list(doc["groups"])
    panel = drawn[0].axes[2]
    heights = np.array([bar.get_height() for bar in panel.patches]).reshape(2, len(groups))
    expected = 100 * np.array([[res["metrics"][g] for g in groups] for res in doc["results"]])
    np.testing.assert_allclose(heights, expected, atol=1e-9)
    segments = [collection.get_segments() for collection in panel.collections]  # the interval bars
    for result, lines in zip(doc["results"], segments):
        np.testing.assert_allclose([[seg[0][1], seg[1][1]] for seg in lines],
                                   100 * np.array([result["ci"][g] for g in groups]), atol=1e-9)
    low, high = panel.get_ylim()
    lows = 100 * min(b for res in doc["results"] for g in groups for b in [res["ci"][g][0], res["metrics"][g]])
    highs = 100 * max(b for res in doc["results"] for g in groups for b in [res["ci"][g][1], res["metrics"][g]])
    assert low <= lows and highs <= high  # every bar top and interval is inside the axis
    if lows > 30:  # the axis starts near the smallest value, not at 0, and says so
        assert low > 0 and "not 0" in panel.get_ylabel()
    # the legend lies outside the axes, so it covers no bar
    fig = drawn[0]
    fig.canvas.draw()
    legend_box = panel.get_legend().get_window_extent()
    axes_box = panel.get_window_extent()
    assert legend_box.y1 <= axes_box.y0


def test_group_axis_limits_follow_the_values():
    from glacli.io.plots import GroupBars, group_axis_limits
    close = [GroupBars("a", ["head", "tail"], [0.70, 0.72], [[0.69, 0.71], [0.71, 0.73]]),
             GroupBars("b", ["head", "tail"], [0.74, 0.75], None)]
    low, high = group_axis_limits(close)
    assert 60 < low <= 69 and 75 <= high < 80  # 6 points of range, not 0 to 100
    assert group_axis_limits([GroupBars("a", ["g"], [0.02], [[0.0, 0.05]])])[0] == 0.0
    assert group_axis_limits([GroupBars("a", ["g"], [None], None)]) == (0.0, 100.0)


# ------------------------------------------------------------------ bad input: one line, exit 2


def test_missing_file(gla, files):
    assert_one_line_error(gla("evaluate", files["zs"], files["dir"] / "nope.h5"), "nope.h5", "no such file")


def test_logits_without_labels(gla, files, tmp_path):
    path = write_logits_file(tmp_path / "unlabelled.h5", files["z"])
    assert_one_line_error(gla("evaluate", path), "unlabelled.h5", "labels are needed to evaluate")


def test_wrong_kind(gla, files):
    assert_one_line_error(gla("evaluate", files["train"]), "train.h5", "'features' file")


def test_classnames_disagree(gla, files, tmp_path):
    other = write_logits_file(tmp_path / "other.h5", files["z"], files["y"], names=[f"c{k}" for k in range(C)])
    assert_one_line_error(gla("evaluate", files["zs"], other), "other.h5", "classnames disagree")


def test_ids_disagree(gla, files, tmp_path):
    ids = [f"x/{i}" for i in range(len(files["y"]))]
    other = write_logits_file(tmp_path / "shuffled.h5", files["z"], files["y"], ids=ids)
    assert_one_line_error(gla("evaluate", files["zs"], other), "shuffled.h5", "ids disagree")


def test_prior_with_wrong_classes(gla, files, tmp_path):
    bad = tmp_path / "bad_prior.h5"
    write_prior(bad, Prior(np.full(C + 1, 1 / (C + 1)), classnames(C + 1), 1.0, "test"))
    assert_one_line_error(gla("evaluate", files["zs"], "--prior", bad), "bad_prior.h5", "13 classes")


def test_train_with_wrong_classes(gla, files, tmp_path):
    bad = tmp_path / "bad_train.h5"
    write_features(bad, np.ones((3, 4)), np.array([0, 1, 2]), ["a", "b", "c"], ["x", "y", "z"])
    assert_one_line_error(gla("evaluate", files["zs"], "--train", bad), "bad_train.h5", "3 classes")


def test_train_without_labels(gla, files, tmp_path):
    bad = tmp_path / "nolabels.h5"
    write_features(bad, np.ones((3, 4)), np.full(3, -1), ["a", "b", "c"], classnames(C))
    assert_one_line_error(gla("evaluate", files["zs"], "--train", bad), "nolabels.h5", "training images")


def test_bad_json_path_leaves_nothing(gla, files):
    assert_one_line_error(gla("evaluate", files["zs"], "--json-out", files["dir"] / "no" / "r.json"),
                          "does not exist")
    assert_one_line_error(gla("evaluate", files["zs"], "--plot", files["dir"]), "is a directory")


def test_existing_output_untouched_on_error(gla, files, tmp_path):
    out = tmp_path / "res.json"
    out.write_text("old")
    unlabelled = write_logits_file(tmp_path / "u.h5", files["z"])
    assert_one_line_error(gla("evaluate", files["zs"], unlabelled, "--json-out", out), "u.h5")
    assert out.read_text() == "old"


@pytest.mark.parametrize("args, fragment", [
    (["--name", "only-one"], "1 names for 2 files"),
    (["--tag", "shots"], "KEY=VALUE"),
    (["--tag", "method=x"], "reserved"),
    (["--tag", "seed=1", "--tag", "seed=2"], "given twice"),
    (["--device", "tpu"], "--device"),
    (["--name", "a", "--name", "a"], "named 'a'"),
    (["--baseline", "zs"], "--bootstrap N"),
    (["--bootstrap", "10", "--baseline", "nope"], "no file is named 'nope'"),
    (["--bootstrap", "-1"], "--bootstrap"),
    (["--bootstrap", "10", "--confidence", "1.5"], "--confidence"),
    (["--few-shot-below", "200"], "--many-shot-above"),
])
def test_bad_options(gla, files, args, fragment):
    assert_one_line_error(gla("evaluate", files["zs"], files["debiased"], *args), fragment)


def test_same_stems_need_names(gla, files, tmp_path):
    (tmp_path / "sub").mkdir()
    twin = write_logits_file(tmp_path / "sub" / "zs.h5", files["z"], files["y"])
    assert_one_line_error(gla("evaluate", files["zs"], twin), "named 'zs'")
    assert gla("evaluate", files["zs"], twin, "--name", "a", "--name", "b").code == 0
