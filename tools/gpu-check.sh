#!/usr/bin/env bash
# The prepared GPU check (issue 16): proves the CUDA path on a real GPU in a few minutes.
#
#   tools/gpu-check.sh prepare [--payload DIR]
#       Here, no GPU needed: builds the release binary with `--features cuda` (nvcc from PyPI, see
#       tools/cuda-toolchain.sh), strips it, and puts it beside the shared ViT-Ti and photos in DIR
#       (default gpu-payload/, ignored by git; the binary gzip'd), checking the whole stays under 64 MiB.
#   tools/gpu-check.sh run OUT [--device cuda|cpu] [--payload DIR] [--bin FILE] [--model DIR]
#                              [--images DIR] [--quick]
#       On the GPU machine: CPU-vs-device parity of fp32/int8/mobile on the photos, then
#       `bench --device` for fp32/int8/mobile on random-weight ViT-B/16 and DeiT-Ti at batch 1 and 32.
#       Everything lands in OUT (made if missing): summary.txt, parity.json/.txt, bench.csv (one
#       report, the README's schema), bench-b*.txt/-raw.csv, log.txt. Exit 0 only if every step
#       ran and every bound held.
#       --device cpu runs the same steps with the CPU as the "device" (a test of this script:
#       tests/gpu_check.rs runs it in CI); --quick uses a tiny random model and few runs.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
die() { echo "gpu-check: $*" >&2; exit 1; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

payload="$repo/gpu-payload"
work=""
# What the run tool of the GPU machine carries along with a command.
carry_limit=$((64 * 1024 * 1024))

prepare() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --payload) payload="$2"; shift 2 ;;
      *) usage ;;
    esac
  done
  local shared="$repo/../shared"
  [ -d "$shared/models/vit-tiny-patch16-224" ] || die "$shared/models/vit-tiny-patch16-224 is missing (the ViT-Ti to check parity on)"
  # shellcheck source=tools/cuda-toolchain.sh
  . "$repo/tools/cuda-toolchain.sh"
  # candle links the CUDA libraries (cudarc's `dynamic-linking`, which candle forces): the link
  # needs them and the GPU machine must have them at run time (see `run`). Only cudart comes with
  # the pip toolchain; link the others against stubs exporting every function cudarc declares,
  # under the real libraries' sonames, so the binary loads the real ones there.
  local libs="$VITWB_CUDA_HOME/link" cudarc
  cudarc=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.10/src | head -1)
  [ -d "$cudarc" ] || (cd "$repo" && cargo fetch)
  cudarc=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.10/src | head -1)
  mkdir -p "$libs"
  ln -sf "$VITWB_CUDA_HOME/nvidia/cu13/lib/libcudart.so.13" "$libs/libcudart.so"
  local lib soname sys
  for spec in cuda:libcuda.so.1:driver cublas:libcublas.so.13:cublas cublasLt:libcublasLt.so.13:cublaslt \
    curand:libcurand.so.10:curand nvrtc:libnvrtc.so.13:nvrtc; do
    IFS=: read -r lib soname sys <<< "$spec"
    grep -ohE '\bfn [A-Za-z_][A-Za-z0-9_]*\(' "$cudarc/$sys/sys/mod.rs" | sed -E 's/fn (.*)\(/void \1(void) {}/' |
      sort -u > "$libs/$lib-stub.c"
    cc -shared -fPIC -Wl,-soname,"$soname" -o "$libs/lib$lib.so" "$libs/$lib-stub.c"
  done
  export LIBRARY_PATH="$libs${LIBRARY_PATH:+:$LIBRARY_PATH}"
  # Its own target folder (VITWB_CUDA_TARGET), so the CPU build is not invalidated.
  local target="${VITWB_CUDA_TARGET:-$repo/target/cuda}"
  (cd "$repo" && CARGO_TARGET_DIR="$target" nice -n 10 cargo build --release --features cuda --bin vit-workbench)
  rm -rf "$payload"
  mkdir -p "$payload/models" "$payload/images"
  # Stripped, then gzip'd: the ~10 MB of PTX text and the kernels' fatbins the binary embeds make
  # it too big to carry beside the ViT-Ti otherwise. `run` unpacks it (gzip is everywhere).
  strip -o "$payload/vit-workbench" "$target/release/vit-workbench"
  gzip -9 "$payload/vit-workbench"
  cp -r "$shared/models/vit-tiny-patch16-224" "$payload/models/"
  cp "$shared/images/"* "$payload/images/"
  local bytes
  bytes=$(du -sb "$payload" | cut -f1)
  echo "gpu-check: payload $payload: $((bytes / 1024 / 1024)) MiB (limit 64 MiB)"
  du -sh "$payload"/* >&2
  [ "$bytes" -lt "$carry_limit" ] || die "the payload is over the 64 MiB a GPU run can carry"
}

run() {
  [ $# -ge 1 ] || usage
  local out="$1"; shift
  local device=cuda bin="" model="" images="" quick=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --device) device="$2"; shift 2 ;;
      --payload) payload="$2"; shift 2 ;;
      --bin) bin="$2"; shift 2 ;;
      --model) model="$2"; shift 2 ;;
      --images) images="$2"; shift 2 ;;
      --quick) quick=1; shift ;;
      *) usage ;;
    esac
  done
  model="${model:-$payload/models/vit-tiny-patch16-224}"
  images="${images:-$payload/images}"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if [ -z "$bin" ] && [ -f "$payload/vit-workbench.gz" ]; then
    bin="$work/vit-workbench"
    gunzip -c "$payload/vit-workbench.gz" > "$bin" && chmod +x "$bin" || die "cannot unpack $payload/vit-workbench.gz"
  fi
  bin="${bin:-$payload/vit-workbench}"
  [ -x "$bin" ] || die "$bin: no executable (run \`tools/gpu-check.sh prepare\` first, or pass --bin)"
  bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
  [ -f "$model/config.json" ] || die "$model: no config.json (pass --model DIR)"
  [ -d "$images" ] || die "$images: no such folder of photos (pass --images DIR)"
  mkdir -p "$out" || die "cannot create $out"
  out="$(cd "$out" && pwd)"
  exec > >(tee -a "$out/log.txt") 2>&1
  local t0=$SECONDS failed=()
  echo "gpu-check: $(date -u +%FT%TZ) device=$device quick=$quick bin=$bin"

  if [ "$device" != cpu ]; then
    command -v nvidia-smi >/dev/null &&
      nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$out/nvidia-smi.csv" || true
    # The binary links cuBLAS, cuRAND, NVRTC and cudart 13 (only libcuda comes with the driver):
    # find them where pip or a toolkit put them, or stop here saying which are missing.
    local missing dirs
    missing=$(ldd "$bin" | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
    if [ -n "$missing" ]; then
      dirs=$( { python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null || true; } |
        while read -r sp; do ls -d "$sp"/nvidia/*/lib 2>/dev/null; done; ls -d /usr/local/cuda*/lib64 2>/dev/null || true)
      export LD_LIBRARY_PATH="$(echo "$dirs" | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      missing=$(ldd "$bin" | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
      [ -z "$missing" ] || die "the binary needs CUDA libraries this machine lacks: $missing(libcuda.so.1 comes with the NVIDIA driver; the others with a CUDA 13 toolkit or pip's nvidia-cublas, nvidia-curand, nvidia-cuda-nvrtc, nvidia-cuda-runtime)"
    fi
  fi
  "$bin" --version

  # 1. Parity: the shared ViT-Ti on the photos, CPU vs device, every variant.
  echo "== parity: $model on $images"
  if ! "$bin" device-check --device "$device" --model "$model" --json "$out/parity.json" "$images" | tee "$out/parity.txt"; then
    failed+=(parity)
  fi

  # 2. Speed: random-weight models with the real shapes (made here: too big to carry).
  local presets batches warmup runs seconds
  if [ "$quick" = 1 ]; then
    presets=tiny-random batches="1 4" warmup=1 runs=3 seconds=0
  else
    presets=vit-base-patch16-224-random,deit-tiny-patch16-224-random batches="1 32" warmup=10 runs=50 seconds=2
  fi
  # Made in a temporary folder and benchmarked from inside it, so reports name them as the README does.
  "$bin" random-models --out "$work" --presets "$presets" || failed+=(random-models)
  local csvs=()
  for b in $batches; do
    echo "== bench: batch $b"
    if (cd "$work" && "$bin" bench --device "$device" --models "$presets" --variants fp32,int8,mobile --batch "$b" \
      --warmup "$warmup" --runs "$runs" --min-seconds "$seconds" \
      --csv "$out/bench-b$b.csv" --raw "$out/bench-b$b-raw.csv") | tee "$out/bench-b$b.txt"; then
      csvs+=("$out/bench-b$b.csv")
    else
      failed+=("bench-b$b")
    fi
  done
  if [ ${#csvs[@]} -gt 0 ]; then
    { head -n 1 "${csvs[0]}"; for c in "${csvs[@]}"; do tail -n +2 "$c"; done; } > "$out/bench.csv.tmp"
    mv "$out/bench.csv.tmp" "$out/bench.csv"
  fi

  {
    echo "gpu-check $(date -u +%FT%TZ), device $device, $((SECONDS - t0)) s"
    [ -s "$out/nvidia-smi.csv" ] && cat "$out/nvidia-smi.csv"
    grep -E 'PASS|FAIL|vs cpu|note:' "$out/parity.txt" 2>/dev/null || true
    for b in $batches; do grep -E "^(cpu:|model|${presets//,/|}|note)" "$out/bench-b$b.txt" 2>/dev/null || true; done
    if [ ${#failed[@]} -eq 0 ]; then echo "gpu-check: PASS"; else echo "gpu-check: FAIL (${failed[*]})"; fi
  } > "$out/summary.txt"
  cat "$out/summary.txt"
  [ ${#failed[@]} -eq 0 ]
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) shift; run "$@" ;;
  *) usage ;;
esac
