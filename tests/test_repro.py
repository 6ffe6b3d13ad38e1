"""The Makefile reproductions (mk/repro.mk) end to end on generated data in each setting's layout.

Every target runs with the tiny open_clip model on a few images per class: ImageFolder trees
(ImageNet), a CoOp split JSON with its image folder (few-shot), ImageNet-LT txt lists, and
CIFAR-100 in torchvision's on-disk format (quick start). Each gla process costs seconds to
start, so the variables are small (HOLDOUT_SHOTS=2, SHOTS=2, SEEDS=1 2) and make runs with -j2.
The random tiny model is near chance, where no temperature matches confidence to accuracy
(the default Q_TEMPERATURE=confidence), and where the logits carry no signal the
maximum-likelihood T has no finite optimum either, so q is fitted at a fixed T (Q_TEMPERATURE=1) here.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from tiny_clip import tiny_clip_fixture, write_jpeg  # noqa: F401

WNIDS = ["n01440764", "n01443537", "n01484850"]
NAMES = ["tench", "goldfish", "great white shark"]
PETS = ["abyssinian", "beagle", "pug"]
CIFAR_NAMES = ["apple", "aquarium_fish", "baby"]

# quickstart-clip reads CIFAR-100 through torchvision, which checks the md5 of the official files;
# generated pickles cannot match it, so this test-only wrapper accepts any existing file.
GLA_WITHOUT_CIFAR_CHECKSUMS = """
import os, sys
import torchvision.datasets.cifar as cifar
cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)
from glacli.cli.main import main
sys.exit(main())
"""


def write_data(root: Path) -> dict[str, str]:
    """Every data set in its expected layout under ``root``; returns the make variables naming them."""
    imagenet = root / "imagenet"
    for c, wnid in enumerate(WNIDS):
        for k in range(6):
            write_jpeg(imagenet / "train" / wnid / f"{wnid}_{k}.JPEG", seed=100 * c + k)
        for k in range(3):
            write_jpeg(imagenet / "val" / wnid / f"val_{c}{k}.JPEG", seed=10_000 + 100 * c + k)
    names = root / "imagenet_classnames.txt"
    names.write_text("\n".join(NAMES) + "\n")

    lists = root / "ImageNet_LT"  # long-tailed train (4 / 2 / 1), balanced val and test
    lists.mkdir()
    train = [f"train/{w}/{w}_{k}.JPEG {c}" for c, w in enumerate(WNIDS) for k in range(4 >> c)]
    val = [f"train/{w}/{w}_5.JPEG {c}" for c, w in enumerate(WNIDS)]
    test = [f"val/{w}/val_{c}{k}.JPEG {c}" for c, w in enumerate(WNIDS) for k in range(3)]
    for split, lines in (("train", train), ("val", val), ("test", test)):
        (lists / f"ImageNet_LT_{split}.txt").write_text("\n".join(lines) + "\n")

    pets = root / "coop" / "oxford_pets"
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for c, name in enumerate(PETS):
        for part, count in (("train", 3), ("val", 2), ("test", 2)):
            for k in range(count):
                rel = f"{name}_{part}_{k}.jpg"
                write_jpeg(pets / "images" / rel, seed=50_000 + 1000 * c + 10 * len(split[part]) + k)
                split[part].append([rel, c, name])
    (pets / "split_zhou_OxfordPets.json").write_text(json.dumps(split))

    cifar = root / "torchvision" / "cifar-100-python"
    cifar.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for part, per_class in (("train", 6), ("test", 2)):
        labels = [c for c in range(len(CIFAR_NAMES)) for _ in range(per_class)]
        with open(cifar / part, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
                         "fine_labels": labels}, f)
    with open(cifar / "meta", "wb") as f:
        pickle.dump({"fine_label_names": CIFAR_NAMES}, f)
    return {"IMAGENET": str(imagenet), "IMAGENET_CLASSNAMES": str(names), "IMAGENET_LT_LISTS": str(lists),
            "IMAGENET_LT_ROOT": str(imagenet), "COOP_DATA": str(root / "coop"), "TV_DATA": str(root / "torchvision")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_clip) -> dict[str, str]:
    root = tmp_path_factory.mktemp("repro")
    wrapper = root / "gla_test_cifar.py"
    wrapper.write_text(GLA_WITHOUT_CIFAR_CHECKSUMS)
    return {**write_data(root / "data"), "RUNS": str(root / "runs"), "GLA": f"{sys.executable} -m glacli",
            "GLA_PYTHON": sys.executable, "MODEL": str(tiny_clip.config), "PRETRAINED": str(tiny_clip.checkpoint),
            "QUICKSTART_MODEL": str(tiny_clip.config), "QUICKSTART_PRETRAINED": str(tiny_clip.checkpoint),
            "DEVICE": "cpu", "EXTRACT_FLAGS": "--workers 0", "HOLDOUT_SHOTS": "2", "SHOTS": "2", "SEEDS": "1 2", "Q_TEMPERATURE": "1",
            "FEWSHOT_DATASETS": "oxfordpets imagenet", "quickstart_gla": f"{sys.executable} {wrapper}"}


def make(workspace: dict[str, str], *goals: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    # HEAD=linear unless a test asks for another: the recipes' plumbing, without prompt learning's epochs
    variables = {k: v for k, v in {"HEAD": "linear", **workspace, **extra}.items() if k.isupper()}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(["make", "-C", str(ROOT), "-j2", *goals, *(f"{k}={v}" for k, v in variables.items())],
                            check=False, capture_output=True, text=True, env=env, timeout=900)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


SETTINGS: dict[str, tuple[str, dict[str, str]]] = {
    "imagenet": ("repro-imagenet", {}),
    "lt": ("repro-lt", {"DATASET": "imagenet_lt"}),
    "fewshot": ("repro-fewshot-all", {}),
    # the 2-shot seed-1 split, q and zero-shot logits of the linear run are reused: only the head's files are new
    "prompt": ("repro-fewshot", {"DATASET": "oxfordpets", "HEAD": "prompt", "SHOTS": "2", "SEEDS": "1",
                                 "PROMPT_EPOCHS": "2", "AUGMENT_VIEWS": "2"}),
    "quickstart": ("quickstart-clip", {"GLA": "{quickstart_gla}"}),
}
"""Each setting: its make goal and variables. make runs once per setting (see :func:`made`)."""


@pytest.fixture(scope="module")
def made(workspace):
    """``made(setting)`` runs the setting's make goal the first time it is asked for, in this module, and
    returns its goal and variables; every test of the setting asserts on that one run."""
    done: dict[str, tuple[str, dict[str, str]]] = {}

    def run(setting: str) -> tuple[str, dict[str, str]]:
        if setting not in done:
            if setting == "prompt":
                run("fewshot")  # its linear run's files are reused
            goal, extra = SETTINGS[setting]
            extra = {k: v.format(**workspace) for k, v in extra.items()}
            make(workspace, goal, **extra)
            done[setting] = (goal, extra)
        return done[setting]

    return run


def report_rows(path: Path) -> dict[str, list[str]]:
    """The Markdown table of a gla report: method -> its cells."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    header = lines[0]
    assert header.startswith("| method |")
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def model_dir(workspace: dict[str, str], setting: str) -> Path:
    return Path(workspace["RUNS"]) / setting / "gla-tiny-clip_gla-tiny-clip"


def assert_groups_add_up(results: dict, groups: tuple[str, ...]) -> None:
    """Each group's accuracy is its classes' pooled accuracy, and the groups together make top-1."""
    count = np.array(results["results"][0]["per_class"]["count"])
    classes = [results["groups"][g]["classes"] for g in groups]
    assert sorted(c for part in classes for c in part) == list(range(len(count)))
    for result in results["results"]:
        correct = np.array(result["per_class"]["correct"])
        for group, members in zip(groups, classes):
            value, n = result["metrics"][group], count[members].sum()
            assert value is None if n == 0 else value == pytest.approx(correct[members].sum() / n, abs=1e-12)
        assert correct.sum() / count.sum() == pytest.approx(result["metrics"]["top1"], abs=1e-12)


def snapshot(runs: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}


@pytest.mark.e2e(budget=90)
def test_repro_imagenet(workspace, made):
    made("imagenet")
    out = model_dir(workspace, "imagenet")
    rows = report_rows(out / "report.md")
    assert list(rows) == ["zero-shot", "zero-shot-debiased", "linear-probe", "ensemble", "GLA"]
    assert all(len(cells) == 1 and cells[0] != "-" for cells in rows.values())
    results = json.loads((out / "results.json").read_text())
    assert results["tags"]["setting"] == "imagenet"
    assert_groups_add_up(results, ("q_head", "q_medium", "q_tail"))
    assert [len(results["groups"][g]["classes"]) for g in ("q_head", "q_medium", "q_tail")] == [1, 1, 1]


@pytest.mark.e2e(budget=90)
def test_repro_lt(workspace, made):
    made("lt")
    out = model_dir(workspace, "lt") / "imagenet_lt"
    rows = report_rows(out / "report.md")
    assert list(rows) == ["zero-shot", "linear-probe", "GLA"]
    assert all(len(cells) == 1 and cells[0] != "-" for cells in rows.values())
    results = json.loads((out / "results.json").read_text())
    assert_groups_add_up(results, ("many_shot", "medium_shot", "few_shot"))
    for result in results["results"]:  # every class has fewer than 20 training images: all are few-shot
        assert result["metrics"]["many_shot"] is None and result["metrics"]["medium_shot"] is None
        assert result["metrics"]["few_shot"] == pytest.approx(result["metrics"]["top1"], abs=1e-12)


@pytest.mark.e2e(budget=120)
def test_repro_fewshot_all_and_one_dataset(workspace, made):
    made("fewshot")
    out = model_dir(workspace, "fewshot")
    for report in (out / "report-linear.md", out / "oxfordpets" / "report-linear.md", out / "imagenet" / "report-linear.md"):
        rows = report_rows(report)
        assert list(rows) == ["zero-shot", "linear-probe", "GLA"], report
        assert all(len(cells) == 1 and "-" not in cells for cells in rows.values()), report
    assert "| method | shots=2 |" in (out / "report-linear.md").read_text()
    # two seeds per setting: every per-dataset cell is a mean ± std over them
    assert all("±" in cells[0] for cells in report_rows(out / "oxfordpets" / "report-linear.md").values())
    assert (out / "oxfordpets" / "2shot" / "seed2" / "results-linear.json").exists()
    # each K-shot run drew K training and min(K, 4) validation images per class
    from glacli.io.rowfile import read_rows
    with read_rows(out / "oxfordpets" / "2shot" / "seed1" / "train.h5", "features") as f:
        assert np.bincount(f.labels).tolist() == [2, 2, 2]
    with read_rows(out / "oxfordpets" / "2shot" / "seed1" / "val.h5", "features") as f:
        assert np.bincount(f.labels).tolist() == [2, 2, 2]
    # repro-fewshot of one dataset is the per-dataset report, already made above
    assert make(workspace, "-q", "repro-fewshot", DATASET="oxfordpets", check=False).returncode == 0


@pytest.mark.e2e(budget=120)
def test_repro_fewshot_with_the_prompt_head_keeps_its_results_apart(workspace, made):
    made("prompt")
    out = model_dir(workspace, "fewshot") / "oxfordpets"
    assert list(report_rows(out / "report-prompt.md")) == ["zero-shot", "prompt", "GLA"]
    from glacli.io.paramfile import read_head
    from glacli.io.rowfile import read_rows
    run = out / "2shot" / "seed1"
    assert read_head(run / "prompt_head.h5").head_type == "prompt"
    with read_rows(run / "train_views.h5", "features") as views, read_rows(run / "train.h5", "features") as train:
        assert views.n_rows == 2 * train.n_rows          # two views of exactly the training images
    assert json.loads((run / "results-prompt.json").read_text())["results"][1]["name"] == "prompt"
    assert json.loads((run / "results-linear.json").read_text())["results"][1]["name"] == "linear-probe"


@pytest.mark.e2e(budget=90)
def test_quickstart_clip(workspace, made):
    made("quickstart")
    out = model_dir(workspace, "quickstart")
    rows = report_rows(out / "report.md")
    assert list(rows) == ["zero-shot", "zero-shot-debiased", "linear-probe", "ensemble", "GLA"]
    from glacli.io.rowfile import read_rows
    with read_rows(out / "test.h5", "features") as f:
        assert f.ids()[:2] == ["CIFAR100/test/0", "CIFAR100/test/1"]
        assert f.classnames == ["apple", "aquarium fish", "baby"]


@pytest.mark.e2e(budget=60)
def test_a_second_run_does_no_work(workspace, made):
    """``make -q`` exits 0 only when no recipe would run: every setting made once is up to date."""
    goals = [made(setting) for setting in SETTINGS]
    before = snapshot(Path(workspace["RUNS"]))
    assert len(before) > 50
    for goal, extra in goals:
        assert make(workspace, "-q", goal, check=False, **extra).returncode == 0, goal
    assert snapshot(Path(workspace["RUNS"])) == before


@pytest.mark.e2e(budget=30)
def test_unknown_dataset_is_a_clear_make_error(workspace):
    result = make(workspace, "repro-fewshot", DATASET="mnist", check=False)
    assert result.returncode != 0 and "repro-fewshot needs DATASET=one of" in result.stderr
