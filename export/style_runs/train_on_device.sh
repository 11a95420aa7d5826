#!/usr/bin/env bash
# Train the three feed-forward styles on one GPU, then compute the benchmark's reference style losses.
#
# Runs from the repository root on the GPU machine (python3 with torch + CUDA; nothing is installed), with
# .style_data/ carried along (built here by export/style_runs/prepare_device_data.sh). Writes 8 flat files
# to $OUT: <style>.pt and <style>.train_log.csv for each style, runs.json (settings, summaries, reference
# losses, versions) and device_log.txt. The three trainings run side by side (one process each: the nets
# are small, so one alone leaves the GPU mostly idle) for STYLE_MINUTES of wall time each.
set -uo pipefail
DATA="${STYLE_DATA:-.style_data}"
OUT="${OUT:?set OUT to the folder the results go to}"
MINUTES="${STYLE_MINUTES:-4.0}"
STYLES="${STYLES:-starry_night the_scream woman_with_hat}"
RUN="${STYLE_RUN_DIR:-/tmp/style_runs}"
# Overridable only to prove the script on a CPU with a toy run (see finish_after_device.md).
DEVICE="${STYLE_DEVICE:-cuda}" BATCH="${STYLE_BATCH:-16}" SIZE="${STYLE_SIZE:-256}"
REF_SIZE="${STYLE_REF_SIZE:-512}" REF_STEPS="${STYLE_REF_STEPS:-500}" MAX_IMAGES="${STYLE_MAX_IMAGES:-0}"
export PYTHONUNBUFFERED=1 FACEGATE_MOBILENET_V2="$DATA/mobilenet_v2-b0353104.pth"
mkdir -p "$RUN" "$OUT"
LOG="$OUT/device_log.txt"
exec > >(tee -a "$LOG") 2>&1
t0=$(date +%s)

echo "== device"; nvidia-smi -L || true
python3 -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
[ -f "$FACEGATE_MOBILENET_V2" ] || { echo "missing $DATA (run prepare_device_data.sh and carry it)"; exit 2; }

echo "== train: $STYLES, $MINUTES min each, side by side"
pids=()
for s in $STYLES; do
  python3 -m export.style_commands train --style "$DATA/style/$s.jpg" --content "$DATA/lfw_subset" --name "$s" \
    --out "$RUN" --device "$DEVICE" --minutes "$MINUTES" --iterations 100000 --batch "$BATCH" --size "$SIZE" --lr 1e-3 --max-images "$MAX_IMAGES" \
    --log-every 25 --checkpoint-every 250 --workers 5 --json > "$RUN/$s.stdout" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for s in $STYLES; do echo "-- $s"; tail -n 25 "$RUN/$s.stdout"; tail -n 2 "$RUN/$s.train_log.csv" 2>/dev/null; done
echo "train status $status after $(( $(date +%s) - t0 )) s"
# Copy the checkpoints out before the reference step, so a time limit there cannot lose the training.
for s in $STYLES; do
  cp "$RUN/$s.pt" "$OUT/$s.pt" 2>/dev/null || echo "no checkpoint for $s"
  cp "$RUN/$s.train_log.csv" "$OUT/$s.train_log.csv" 2>/dev/null || echo "no log for $s"
done

echo "== reference: J_style after 500 Adam steps (lr 0.01) at 512², per style and benchmark portrait"
rpids=()
for s in $STYLES; do
  [ -f "$RUN/$s.pt" ] || continue
  python3 -m export.style_commands bench --reference-out "$RUN/$s.reference.json" --checkpoint "$RUN/$s.pt" \
    --content-images "$DATA"/bench/*/*.jpg --paintings "$DATA/style" --device "$DEVICE" --size "$REF_SIZE" \
    --steps "$REF_STEPS" --lr 0.01 --json > "$RUN/$s.reference.stdout" 2>&1 &
  rpids+=($!)
done
for p in "${rpids[@]}"; do wait "$p" || { status=1; }; done
for s in $STYLES; do tail -n 3 "$RUN/$s.reference.stdout" 2>/dev/null; done

echo "== collect"
python3 - "$RUN" "$OUT/runs.json" $STYLES <<'PY'
import json, sys, platform
from pathlib import Path
import torch
run, out, styles = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
doc = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__, "python": platform.python_version(),
       "settings": {}, "summaries": {}, "reference": None}
merged = None
for s in styles:
    f = run / f"{s}.settings.json"
    if f.is_file():
        doc["settings"][s] = json.loads(f.read_text())
    stdout = run / f"{s}.stdout"
    if stdout.is_file():
        text = stdout.read_text()
        try:
            doc["summaries"][s] = json.loads(text[text.index("{"):])
        except ValueError:
            doc["summaries"][s] = {"error": text[-2000:]}
    ref = run / f"{s}.reference.json"
    if ref.is_file():
        r = json.loads(ref.read_text())
        if merged is None:
            merged = {k: v for k, v in r.items() if k not in ("losses", "costs")} | {"losses": {}, "costs": {}}
        merged["losses"].update(r["losses"])
        merged["costs"].update(r["costs"])
doc["reference"] = merged
out.write_text(json.dumps(doc, indent=2) + "\n")
print("wrote", out)
PY
echo "done in $(( $(date +%s) - t0 )) s, status $status"
ls -la "$OUT"
exit $status
