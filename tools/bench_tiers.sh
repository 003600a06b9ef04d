#!/usr/bin/env bash
# The README's performance tables in one run, on this machine's CPU: vit-workbench on every int8
# path the CPU has (forced with VITWB_ISA), then PyTorch and ONNX Runtime on the same
# random-weight checkpoints (tools/bench_peers.py), one after the other so all see the same
# machine (PyTorch also held to AVX2 where the avx2 path exists, to compare with it). Needs a
# release build and the models from tools/make_bench_models.py.
#
#   tools/bench_tiers.sh OUT_DIR [--quick]
#
# --quick: fewer runs (a smoke test of this script, not numbers to publish).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tools/bench_tiers.sh OUT_DIR [--quick]}
quick=${2:-}
mkdir -p "$out"
bin=./target/release/vit-workbench
models=target/bench-models
vitb=$models/vit-base-patch16-224-random
deit=$models/deit-tiny-patch16-224-random
for m in "$vitb" "$deit"; do
  test -f "$m/model.safetensors" || { echo "missing $m: run python3 tools/make_bench_models.py" >&2; exit 1; }
done
threads=2
if [ "$quick" = "--quick" ]; then
  runs=(--warmup 2 --runs 3 --min-seconds 0.2); peer_runs=(--warmup 1 --runs 3 --min-seconds 0.2); kmin=0.05
else
  runs=(--warmup 10 --runs 30 --min-seconds 3); peer_runs=(--warmup 10 --runs 30 --min-seconds 3); kmin=0.5
fi

grep -m1 "model name" /proc/cpuinfo | tee "$out/cpu.txt"
grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E "^(avx2|fma|avx512f|avx512bw|avx512vl|avx512_vnni|avx_vnni|amx_int8)$" | tr '\n' ' ' | tee -a "$out/cpu.txt"
echo | tee -a "$out/cpu.txt"

echo "== kernels (every path, % of each path's measured peak)"
$bin kernels --threads $threads --min-seconds $kmin | tee "$out/kernels.txt"

paths=$($bin kernels --list-paths)
for isa in $paths; do
  echo "== bench, int8 path $isa, batch 1"
  # The portable path on ViT-B takes seconds a run: DeiT-Ti only.
  list="$vitb,$deit"; [ "$isa" = portable ] && list="$deit"
  VITWB_ISA=$isa $bin bench --threads $threads "${runs[@]}" --models "$list" --csv "$out/ours-$isa-b1.csv" | tee "$out/ours-$isa-b1.txt"
done
echo "== bench, best path, batch 8"
$bin bench --threads $threads --batch 8 "${runs[@]}" --models "$vitb,$deit" --csv "$out/ours-best-b8.csv" | tee "$out/ours-best-b8.txt"

if echo "$paths" | grep -qx avx2; then
  echo "== PyTorch held to AVX2 (to compare with the avx2 path above), batch 1"
  python3 tools/bench_peers.py "$vitb" "$deit" --hold-avx2 --threads $threads --batch 1 "${peer_runs[@]}" \
    --csv "$out/peers-avx2.csv" 2>&1 | grep -v -i -E "warn|Loading weights|pre-processing" | tee "$out/peers-avx2.txt"
fi
echo "== peers (PyTorch, ONNX Runtime), batch 1 and 8"
python3 tools/bench_peers.py "$vitb" "$deit" --threads $threads --batch 1 8 "${peer_runs[@]}" --csv "$out/peers.csv" \
  2>&1 | grep -v -i -E "warn|Loading weights|pre-processing" | tee "$out/peers.txt"
