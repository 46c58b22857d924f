#!/usr/bin/env bash
# Table 3 (MNIST, SmallCNN, eps 0.3) at full scale on one GPU, as one device call: queue every row
# run and evaluation, run them all at once on the GPU, write the report, and copy it to $OUT.
#
#   source .device/boot.sh && EPOCHS=20 bash bench/table3_gpu.sh         (on the GPU machine)
#   SCALE=tiny DEVICE=cpu OUT=/tmp/out bash bench/table3_gpu.sh          (a rehearsal on the CPU)
#
# The six SmallCNN trainings share the GPU (--slots-per-gpu; each needs well under 2 GiB), then the
# six evaluations do. --epochs runs the preset's recipe for fewer epochs, without lr decay.
set -euo pipefail
EPOCHS=${EPOCHS:-20}
SCALE=${SCALE:-full}
DEVICE=${DEVICE:-cuda}
SLOTS=${SLOTS:-6}
OUT=${OUT:?set OUT to the folder the report is copied to}
RUNS=${ADVTUI_RUNS:-$(mktemp -d)}
export ADVTUI_RUNS="$RUNS"
adv() { python3 -m advtui "$@"; }

start=$(date +%s)
adv reproduce table3 --scale "$SCALE" --seeds 1 --epochs "$EPOCHS" --device "$DEVICE"
if [ "$DEVICE" = cpu ]; then
  adv worker --once --cpu-slots 2
else
  adv worker --once --slots-per-gpu "$SLOTS" --min-free-memory 2048 --max-utilization 100
fi
trained=$(date +%s)
adv report --table table3 --out "$RUNS/report" --no-analyses
adv ls
end=$(date +%s)
echo "table3 at $SCALE scale, $EPOCHS epochs, seed 0: queue $((trained - start)) s, report $((end - trained)) s"

mkdir -p "$OUT"
cp "$RUNS/report/report.md" "$RUNS/report/report.json" "$OUT/"
cp "$RUNS"/report/figures/table3-*.png "$OUT/" 2>/dev/null || true
adv ls --json > "$OUT/runs.json"
