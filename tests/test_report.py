"""``gla report``: numbers equal a hand computation; the table, plot and one-line errors."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
from synth import biased_logits, write_logits_file

from glacli.core import report
from glacli.io.results_json import read_records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_doc(path: Path, tags: dict, results: dict[str, dict]) -> Path:
    """A minimal evaluate document: only what report reads."""
    doc = {"schema": "gla-evaluate", "schema_version": 1, "tags": tags,
           "results": [{"name": name, "metrics": m} for name, m in results.items()]}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def docs(tmp_path: Path) -> list[Path]:
    """Two methods x shots {1, 4} x seeds {1, 2, 3}; probe at 4 shots has only two seeds."""
    top1 = {("zs", 1): [0.60, 0.60, 0.60], ("probe", 1): [0.50, 0.53, 0.56],
            ("zs", 4): [0.60, 0.60, 0.60], ("probe", 4): [0.70, 0.75]}
    paths = []
    for shots in (1, 4):
        for seed in (1, 2, 3):
            results = {m: {"top1": top1[(m, shots)][seed - 1], "nll": 1.0 + seed}
                       for m in ("zs", "probe") if seed <= len(top1[(m, shots)])}
            paths.append(write_doc(tmp_path / f"r_{shots}_{seed}.json", {"shots": shots, "seed": seed}, results))
    return paths


def test_report_equals_hand_computation(gla, docs, tmp_path):
    md = tmp_path / "report.md"
    r = gla("report", *docs, "-o", md)
    assert r.code == 0, r.err
    text = md.read_text()
    # probe, 1 shot: mean 0.53, sample std of (0.50, 0.53, 0.56) = 0.03 -> "53.00 ± 3.00"
    assert "| probe | 53.00 ± 3.00 (n=3) | 72.50 ± 3.54 (n=2) |" in text
    assert "| zs | 60.00 ± 0.00 (n=3) | 60.00 ± 0.00 (n=3) |" in text
    assert "| method | shots=1 | shots=4 |" in text
    assert "ddof = 1" in text and "varying: seed" in text
    assert "probe" in r.out and "53.00" in r.out
    assert statistics.stdev([0.70, 0.75]) * 100 == pytest.approx(3.5355, abs=1e-4)


def test_report_json_matches_numpy(gla, docs, tmp_path):
    r = gla("report", *docs, "-o", tmp_path / "r.md", "--json", "--metric", "nll")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["metric"] == "nll" and doc["cols"] == "shots" and doc["varying"] == ["seed"]
    cell = next(c for c in doc["cells"] if c["row"] == "probe" and c["col"] == 4)
    assert cell["n"] == 2 and cell["values"] == [2.0, 3.0]
    assert cell["mean"] == pytest.approx(2.5) and cell["std"] == pytest.approx(np.std([2.0, 3.0], ddof=1))


def test_single_run_shows_value_alone():
    records = read_records(
        {"schema": "gla-evaluate", "schema_version": 1, "tags": {"shots": 2},
         "results": [{"name": "GLA", "metrics": {"top1": 0.61874}}]}, "x.json")
    table = report.aggregate(records, "top1", "method", "shots")
    assert report.format_cell(table, table.cells[("GLA", 2)], show_n=False) == "61.87"
    assert np.isnan(table.cells[("GLA", 2)].std)


def test_rows_and_cols_are_any_key_and_columns_sort_numerically(tmp_path):
    records = []
    for shots in (16, 2, 8):
        doc = {"schema": "gla-evaluate", "schema_version": 1, "tags": {"shots": shots, "data": "a"},
               "results": [{"name": "m", "metrics": {"top1": shots / 100}}]}
        records += read_records(doc, f"{shots}.json")
    table = report.aggregate(records, "top1", "data", "shots")
    assert table.cols == [2, 8, 16] and table.rows == ["a"]
    assert report.aggregate(records, "top1", "method", None).cells[("m", report.NO_COLUMN)].n == 3


def test_end_to_end_from_evaluate(gla, tmp_path, drawn):
    """evaluate --json per seed, then report: the cell and the plotted point are the mean/std of the
    evaluate top-1s."""
    top1s = []
    for seed in (1, 2):
        z, y, _ = biased_logits(20, 6, seed=seed)
        logits = write_logits_file(tmp_path / f"zs{seed}.h5", z, y)
        r = gla("evaluate", logits, "--name", "zero-shot", "--tag", "shots=8", "--tag", f"seed={seed}",
                "--json-out", tmp_path / f"e{seed}.json")
        assert r.code == 0, r.err
        top1s.append(float((z.astype(np.float32).argmax(1) == y).mean()))
    png = tmp_path / "shots.png"
    r = gla("report", tmp_path / "e1.json", tmp_path / "e2.json", "-o", tmp_path / "rep.md", "--plot", png)
    assert r.code == 0, r.err
    expected = f"{100 * np.mean(top1s):.2f} ± {100 * np.std(top1s, ddof=1):.2f}"
    assert f"| zero-shot | {expected} |" in (tmp_path / "rep.md").read_text()
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob(".*tmp-*"))
    (ax,) = drawn[0].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8"] and ax.get_xlabel() == "shots"
    (series,) = ax.containers  # one method: its points, caps and error bars
    line, _, (bars,) = series.lines
    np.testing.assert_allclose(line.get_ydata(), [100 * np.mean(top1s)], rtol=1e-12)
    (bar,) = bars.get_segments()  # mean -/+ one sample std
    np.testing.assert_allclose(bar[:, 1], 100 * (np.mean(top1s) + np.array([-1, 1]) * np.std(top1s, ddof=1)),
                               rtol=1e-12)


def test_plot_with_categorical_columns(gla, tmp_path, drawn):
    """Text settings are placed at equal spacing, labelled by their values."""
    top1 = {"bbc": 0.5, "imagenet": 0.25}
    paths = [write_doc(tmp_path / f"{d}.json", {"data": d}, {"GLA": {"top1": v}}) for d, v in top1.items()]
    png = tmp_path / "p.png"
    r = gla("report", *paths, "-o", tmp_path / "r.md", "--cols", "data", "--plot", png)
    assert r.code == 0, r.err
    assert png.read_bytes()[:8] == PNG_MAGIC
    (ax,) = drawn[0].axes
    names = [t.get_text() for t in ax.get_xticklabels()]
    assert sorted(names) == ["bbc", "imagenet"] and list(ax.get_xticks()) == [0.0, 1.0]
    (series,) = ax.containers
    line = series.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), [0.0, 1.0])
    np.testing.assert_allclose(line.get_ydata(), [100 * top1[name] for name in names], rtol=1e-12)


# ------------------------------------------------------------------ paired differences to a baseline


@pytest.fixture
def paired_docs(tmp_path: Path) -> list[Path]:
    """zs and probe x shots {1, 4} x seeds, evaluated with --bootstrap --baseline zs: probe's top-1
    intervals of the difference exclude 0 at seeds 1 and 2 of 1 shot only."""
    top1 = {("zs", 1): [0.60, 0.60, 0.60], ("probe", 1): [0.50, 0.53, 0.56],
            ("zs", 4): [0.60, 0.60, 0.60], ("probe", 4): [0.70, 0.75]}
    ci = {1: [[-0.12, -0.08], [-0.09, -0.01], [-0.08, 0.01]], 4: [[-0.01, 0.2], [0.0, 0.3]]}
    paths = []
    for shots in (1, 4):
        for seed in (1, 2, 3):
            results = [{"name": "zs", "metrics": {"top1": 0.60}, "ci": {"top1": [0.55, 0.65]}}]
            if seed <= len(top1[("probe", shots)]):
                value = top1[("probe", shots)][seed - 1]
                results.append({"name": "probe", "metrics": {"top1": value}, "ci": {"top1": [value - .05, value + .05]},
                                "vs_baseline": {"top1": {"difference": value - 0.60, "ci": ci[shots][seed - 1]}}})
            doc = {"schema": "gla-evaluate", "schema_version": 2, "tags": {"shots": shots, "seed": seed},
                   "bootstrap": {"resamples": 1000, "seed": 0, "confidence": 0.95, "sampling": "stratified",
                                 "interval": "percentile", "baseline": "zs"}, "results": results}
            paths.append(tmp_path / f"p_{shots}_{seed}.json")
            paths[-1].write_text(json.dumps(doc))
    return paths


def test_baseline_differences_equal_hand_computation(gla, paired_docs, tmp_path):
    md = tmp_path / "report.md"
    r = gla("report", *paired_docs, "-o", md, "--baseline", "zs")
    assert r.code == 0, r.err
    text = md.read_text()
    # 1 shot: probe - zs = -0.10, -0.07, -0.04 -> mean -7.00, sample std 3.00; intervals exclude 0 twice
    # 4 shots: +0.10, +0.15 -> +12.50 ± 3.54; [-0.01, 0.2] and [0.0, 0.3] both touch 0
    assert "## difference to zs" in text
    assert "| probe | -7.00 ± 3.00 (2/3 excl. 0) (n=3) | +12.50 ± 3.54 (0/2 excl. 0) (n=2) |" in text
    assert "| zs | 60.00 ± 0.00 (n=3) | 60.00 ± 0.00 (n=3) |" in text  # the main table is unchanged
    assert "-7.00 ± 3.00" in r.out

    r = gla("report", *paired_docs, "-o", md, "--baseline", "zs", "--json")
    differences = json.loads(r.out)["differences"]
    assert differences["baseline"] == "zs"
    cell = next(c for c in differences["cells"] if c["col"] == 1)
    assert cell["row"] == "probe" and cell["values"] == pytest.approx([-0.10, -0.07, -0.04])
    assert cell["std"] == pytest.approx(0.03) and cell["excluding_zero"] == 2 and cell["with_interval"] == 3


def test_single_run_shows_its_interval(gla, paired_docs, tmp_path):
    md = tmp_path / "one.md"
    r = gla("report", paired_docs[0], "-o", md, "--baseline", "zs")
    assert r.code == 0, r.err
    text = md.read_text()
    assert "| zs | 60.00 [55.00, 65.00] |" in text
    assert "| probe | -10.00 [-12.00, -8.00] (1/1 excl. 0) |" in text


def test_differences_without_bootstrap_have_no_counts(gla, docs, tmp_path):
    md = tmp_path / "r.md"
    assert gla("report", *docs, "-o", md, "--baseline", "zs").code == 0
    assert "| probe | -7.00 ± 3.00 (n=3) | +12.50 ± 3.54 (n=2) |" in md.read_text()


def test_baseline_errors(gla, paired_docs, tmp_path):
    assert_one_line_error(gla("report", *paired_docs, "-o", tmp_path / "r.md", "--baseline", "GLA"),
                          "no result is named 'GLA'", "zs, probe")
    lonely = write_doc(tmp_path / "lonely.json", {"shots": 8, "seed": 1}, {"probe": {"top1": 0.5}})
    assert_one_line_error(gla("report", *paired_docs, lonely, "-o", tmp_path / "r.md", "--baseline", "zs"),
                          "lonely.json", "no 'zs' result", "seed=1 shots=8")


# ------------------------------------------------------------------ bad input: one line, exit 2


def test_bad_json(gla, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_one_line_error(gla("report", bad, "-o", tmp_path / "r.md"), "bad.json", "not valid JSON")


@pytest.mark.parametrize("doc, fragment", [
    ({"results": []}, "schema"),
    ({"schema": "gla-evaluate", "schema_version": 99, "tags": {}, "results": []}, "schema_version 99"),
    ({"schema": "gla-evaluate", "schema_version": 1, "results": [{"name": "a", "metrics": {}}]}, "'tags'"),
    ({"schema": "gla-evaluate", "schema_version": 1, "tags": {}, "results": []}, "'results'"),
    ({"schema": "gla-evaluate", "schema_version": 1, "tags": {}, "results": [{"metrics": {}}]}, "results[0]"),
    ([1, 2], "schema"),
])
def test_missing_fields(gla, tmp_path, doc, fragment):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    assert_one_line_error(gla("report", path, "-o", tmp_path / "r.md"), "doc.json", fragment)


def test_unknown_metric(gla, docs, tmp_path):
    assert_one_line_error(gla("report", *docs, "-o", tmp_path / "r.md", "--metric", "accuracy"),
                          "unknown metric 'accuracy'")


def test_metric_absent_from_results(gla, docs, tmp_path):
    assert_one_line_error(gla("report", *docs, "-o", tmp_path / "r.md", "--metric", "q_tail"),
                          "no metric 'q_tail'", "--prior")


def test_null_metric(gla, tmp_path):
    path = write_doc(tmp_path / "n.json", {}, {"GLA": {"top1": None}})
    assert_one_line_error(gla("report", path, "-o", tmp_path / "r.md"), "n.json", "not a number")


def test_unknown_column_key(gla, docs, tmp_path):
    assert_one_line_error(gla("report", *docs, "-o", tmp_path / "r.md", "--cols", "shot"),
                          "--cols", "'shot'", "seed, shots")


def test_key_missing_in_some_results(gla, docs, tmp_path):
    odd = write_doc(tmp_path / "odd.json", {"seed": 9}, {"zs": {"top1": 0.5}})
    assert_one_line_error(gla("report", *docs, odd, "-o", tmp_path / "r.md"), "odd.json", "no 'shots' tag")


def test_duplicate_result(gla, docs, tmp_path):
    assert_one_line_error(gla("report", docs[0], docs[0], "-o", tmp_path / "r.md"), "duplicate result")


def test_missing_file_and_bad_outputs_leave_existing_report(gla, docs, tmp_path):
    md = tmp_path / "r.md"
    md.write_text("old")
    assert_one_line_error(gla("report", tmp_path / "nope.json", "-o", md), "nope.json", "no such file")
    assert_one_line_error(gla("report", *docs, "-o", md, "--plot", tmp_path / "no" / "p.png"), "does not exist")
    assert_one_line_error(gla("report", *docs, "-o", tmp_path / "no" / "r.md"), "does not exist")
    assert md.read_text() == "old"
