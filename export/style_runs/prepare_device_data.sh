#!/usr/bin/env bash
# Build .style_data/, the folder carried to the GPU machine for export/style_runs/train_on_device.sh:
#   style/*.jpg                       the paintings
#   lfw_subset/<Name>_NNNN.jpg         LFW portraits for training, the benchmark's identities left out
#   bench/<Name>/<Name>_NNNN.jpg       the 5 held-out benchmark portraits (export.train.style.BENCH_PORTRAITS)
#   mobilenet_v2-b0353104.pth          the loss network's ImageNet weights
# under 60 MiB in all (the device copies at most 64 MiB with the working tree), and ignores it in git.
# Usage, from the repository root: bash export/style_runs/prepare_device_data.sh [SHARED_DIR] [DEST]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
SHARED="${1:-${FACEGATE_DATA:-../shared}}"
DEST="${2:-.style_data}"
LIMIT_MIB="${STYLE_DATA_MIB:-50}"

rm -rf "$DEST"
mkdir -p "$DEST/style" "$DEST/lfw_subset" "$DEST/bench"
cp "$SHARED"/style/*.jpg "$DEST/style/"
cp "$SHARED/models/mobilenet_v2-b0353104.pth" "$DEST/"

python3 - "$SHARED/lfw/images" "$DEST" "$LIMIT_MIB" <<'PY'
import shutil, sys
from pathlib import Path

from export.train.style import BENCH_PORTRAITS

src, dest, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) * 2**20
for rel in BENCH_PORTRAITS:
    (dest / "bench" / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / rel, dest / "bench" / rel)
held_out = {rel.split("/")[0] for rel in BENCH_PORTRAITS}
used = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
# Identities in name order, at most 3 images each (more people, fewer repeats), until the size budget is spent.
count = 0
for person in sorted(p for p in src.iterdir() if p.is_dir() and p.name not in held_out):
    for img in sorted(person.glob("*.jpg"))[:3]:
        size = img.stat().st_size
        if used + size > limit:
            break
        shutil.copyfile(img, dest / "lfw_subset" / img.name)  # flat: thousands of folders would cost MiB too
        used += size
        count += 1
    if used + 20_000 > limit:
        break
print(f"{dest}: {count} training portraits, {len(BENCH_PORTRAITS)} benchmark portraits, {used / 2**20:.1f} MiB")
PY

exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qx "/$DEST/" "$exclude" 2>/dev/null || echo "/$DEST/" >> "$exclude"
du -sh --apparent-size "$DEST"
