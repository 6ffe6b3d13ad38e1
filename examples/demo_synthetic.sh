#!/usr/bin/env bash
# The core GLA pipeline on a small generated example (no model, no download): import logits
# written by another tool, estimate the zero-shot prior, combine, evaluate.
set -euo pipefail
out=${1:-runs/demo-synthetic}
mkdir -p "$out"
python examples/synthetic_example.py "$out"
for split in val test; do gla import "$out/zs_$split.csv" --kind logits -o "$out/zs_$split.h5" > /dev/null; done
gla import "$out/ft_test.csv" --kind logits -o "$out/ft_test.h5" > /dev/null
gla estimate-prior "$out/zs_val.h5" -o "$out/prior.h5" --temperature nll
gla combine --zeroshot "$out/zs_test.h5" --prior "$out/prior.h5" -o "$out/debiased_test.h5"
gla combine --zeroshot "$out/zs_test.h5" --prior "$out/prior.h5" --finetuned "$out/ft_test.h5" \
    --method ensemble --alpha 0.5 -o "$out/ensemble_test.h5"
gla combine --zeroshot "$out/zs_test.h5" --prior "$out/prior.h5" --finetuned "$out/ft_test.h5" -o "$out/gla_test.h5"
gla evaluate "$out/zs_test.h5" "$out/debiased_test.h5" "$out/ft_test.h5" "$out/ensemble_test.h5" "$out/gla_test.h5" \
    --name zero-shot --name debiased --name fine-tuned --name ensemble --name GLA \
    --prior "$out/prior.h5" --json-out "$out/results.json" --plot "$out/results.png"
echo
echo "This demo ran on generated logits. Results: $out/results.json, plot: $out/results.png"
