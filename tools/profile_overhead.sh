#!/usr/bin/env bash
# What the per-stage profiler costs when it is off: the forward of the normal build (profiler
# compiled in, not asked for) against a build with it compiled out (feature `no-profiler`),
# interleaved round by round on the same machine, `bench` p50 per round.
#
#   tools/profile_overhead.sh [MODEL_DIR] [ROUNDS] [VARIANTS]
#
# MODEL_DIR defaults to the random-weight DeiT-Ti (most stages per millisecond, so the worst
# case for per-stage overhead); make it with `vit-workbench random-models`.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-target/bench-models/deit-tiny-patch16-224-random}
rounds=${2:-10}
variants=${3:-fp32,int8}
out=target/profile-overhead
mkdir -p "$out"
# SKIP_BUILD=1 reuses the two binaries of the last run (to measure again on a quieter machine).
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --bin vit-workbench --features no-profiler
  cp target/release/vit-workbench "$out/compiled-out"
  cargo build --release --bin vit-workbench
  cp target/release/vit-workbench "$out/compiled-in"
fi
for r in $(seq 1 "$rounds"); do
  for build in compiled-in compiled-out; do
    "$out/$build" bench --models "$model" --variants "$variants" --warmup 5 --runs 40 --max-runs 40 \
      --min-seconds 0 --csv "$out/$build-$r.csv" -q > /dev/null
  done
done
python3 - "$out" "$rounds" <<'PY'
import csv, statistics as st, sys
out, rounds = sys.argv[1], int(sys.argv[2])
p50 = {}
for build in ("compiled-in", "compiled-out"):
    for r in range(1, rounds + 1):
        for row in csv.DictReader(open(f"{out}/{build}-{r}.csv")):
            p50.setdefault((row["variant"], build), []).append(float(row["p50_ms"]))
print(f"{rounds} interleaved rounds, bench p50 per round (ms)")
for v in sorted({k[0] for k in p50}):
    a, b = p50[(v, "compiled-in")], p50[(v, "compiled-out")]
    ratio = [x / y for x, y in zip(a, b)]
    print(f"{v:>7}: profiler compiled in, off: median {st.median(a):.3f}  |  compiled out: median {st.median(b):.3f}  |"
          f"  in/out per round: median {st.median(ratio):.4f}, range {min(ratio):.4f}-{max(ratio):.4f}")
PY
