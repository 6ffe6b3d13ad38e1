"""benchmarks/gpu_check.sh with SMOKE=1: every step of the GPU check, small and on the CPU.

A machine with a GPU is lent rarely and briefly; this keeps the script that runs there working.
It lives with the script, not in the unit suite (about 40 s of subprocesses): run it with
``make gpu-check-smoke`` before carrying the script to a GPU machine, or after changing it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_step_runs_and_the_summary_has_each_table(tmp_path):
    env = {**os.environ, "SMOKE": "1", "RESULTS": str(tmp_path), "PYTHON": sys.executable,
           "IMAGES": "32", "FIT_ROWS": "3000", "VAL_ROWS": "1000", "WORKERS": "1"}
    env.pop("OUT", None)
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 step(s) failed" in done.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"gpu_check.log", "summary.md", "cpu_decode.json",
                                                    "gpu_decode.json", "prompt_speed.json", "probe_scale.json",
                                                    "finetuned_extract.json"}
    for name in ("cpu_decode", "gpu_decode"):
        throughput = json.loads((tmp_path / f"{name}.json").read_text())
        assert throughput["images"] == 32 and throughput["images_per_second"]["extract"] > 0
    prompt = json.loads((tmp_path / "prompt_speed.json").read_text())
    assert prompt["classes"] == 10 and prompt["shots"] == 2 and len(prompt["train_loss"]) == prompt["epochs"] == 2
    assert prompt["steps_per_epoch"] == 1 and prompt["seconds_per_epoch"] > 0
    probe = json.loads((tmp_path / "probe_scale.json").read_text())
    assert probe["rows"] == 3000 and set(probe["runs"]) == {"cpu", "device", "search"}
    assert all("report" in run for run in probe["runs"].values()), probe["runs"]
    assert probe["runs"]["cpu"]["report"]["iterations"] == probe["iterations"]
    finetuned = json.loads((tmp_path / "finetuned_extract.json").read_text())
    assert finetuned["max_feature_difference"] == 0 and finetuned["checkpoint_prefix"] == "image_encoder.model."
    assert set(finetuned["runs"]) == {"plain state dict", "pickled model"}
    summary = (tmp_path / "summary.md").read_text().splitlines()
    throughput = [line for line in summary
                  if line.startswith(("| cpu | ", "| gpu | ")) and ("| loading |" in line or "| model |" in line)]
    assert len(throughput) == 2  # the decoding table: both rows measured, bound by loading or model
    fits = [line for line in summary
            if line.startswith(("| cpu | cpu | 5 |", "| device | cpu | 5 |", "| search | cpu |"))]
    assert len(fits) == 3 and any(line.startswith("search: ") for line in summary)
    assert sum(line.startswith("prompt learning (tiny, 10 classes x 2 shots, cpu): ") for line in summary) == 1
    assert sum(line.startswith("fine-tuned extraction (tiny, imagenet-r layout") for line in summary) == 1
    assert (tmp_path / "gpu_check.log").read_text().count("== ") >= 8
