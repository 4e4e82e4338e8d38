#!/usr/bin/env bash
# The CUDA path in under 5 minutes on one GPU: a tiny quickstart at fp32 and at bf16 with
# --device cuda (pinned memory, non-blocking copies, autocast), its cell values printed side by
# side, the per-pass cost of two zoo models on the GPU, and bench_pgd's ratio on CUDA.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, in the project's virtualenv
#
# Expect: "cuda: <GPU name>", two runs of 36 cells each (--limit 200, 3 epochs, PGD-10, audio+video
# threats), every robust accuracy <= its clean accuracy, bf16 within a few points of fp32 at each
# cell (the script prints the largest difference and fails above 0.05), then the zoo cost lines
# and "ratio bare/avharness = ..." for PGD on CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)/gpu_check}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('cuda:', torch.cuda.get_device_name(0))"
SHRINK=(--limit 200 --set defenses.0.epochs=3 --set attacks.1.steps=10 --set 'threats=[{name: audio, audio: {norm: linf, eps: [0.0, 0.1, 0.4]}}, {name: video, video: {norm: linf, eps: [0.0, 0.02, 0.08]}}]')
for p in fp32 bf16; do
  start=$SECONDS
  avharness run suites/quickstart.yaml -o "$OUT/$p" -q --device cuda --set precision=$p "${SHRINK[@]}"
  echo "$p: $((SECONDS - start)) s wall (data, training, attacks)"
done
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
a, b = (json.load(open(f"{out}/{p}/report.json")) for p in ("fp32", "bf16"))
ref = {c["id"]: c for c in a["cells"]}
worst = 0.0
print(f"{'cell':42s} {'clean fp32':>10s} {'robust fp32':>11s} {'robust bf16':>11s}")
for c in b["cells"]:
    r = ref[c["id"]]
    assert c["robust_accuracy"] <= c["clean_accuracy"] and r["robust_accuracy"] <= r["clean_accuracy"]
    worst = max(worst, abs(c["robust_accuracy"] - r["robust_accuracy"]))
    print(f"{c['id']:42s} {r['clean_accuracy']:10.3f} {r['robust_accuracy']:11.3f} {c['robust_accuracy']:11.3f}")
print(f"stages fp32: {a['stages']}\nstages bf16: {b['stages']}")
print(f"largest |robust bf16 - robust fp32| = {worst:.3f} (limit 0.05)")
sys.exit(1 if worst > 0.05 else 0)
PY
python benchmarks/bench_zoo_cost.py --device cuda --models cnn_transformer,av_late_fusion --reps 3
python benchmarks/bench_pgd.py --device cuda --batch 128 --steps 10 --repeats 5
