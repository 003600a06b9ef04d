# Source this file (bash) to build with `--features cuda` on a machine without a CUDA install or a GPU:
#   . tools/cuda-toolchain.sh && cargo check --release --features cuda
# It installs NVIDIA's nvcc from PyPI (pinned; no system CUDA needed) into $VITWB_CUDA_HOME once, and
# exports what candle's build scripts read. Used by .ci/run and tools/gpu-check.sh.
#
# - CUDA_COMPUTE_CAP=90: candle compiles its kernels for one architecture and would otherwise ask a
#   GPU; 90 is Hopper (H100/H200), the GPU the prepared check runs on.
# - CUDARC_CUDA_VERSION=13040: cudarc 0.19.10 does not know the 13.5 toolkit; its 13.4 bindings are
#   what the 13.x drivers expose for everything candle calls.

VITWB_CUDA_HOME="${VITWB_CUDA_HOME:-/opt/vitwb-cuda-13.5}"
vitwb_cuda_root="$VITWB_CUDA_HOME/nvidia/cu13"
if ! "$vitwb_cuda_root/bin/nvcc" --version >/dev/null 2>&1; then
  echo "cuda-toolchain: installing nvcc 13.5 from PyPI into $VITWB_CUDA_HOME" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore --upgrade \
    --target "$VITWB_CUDA_HOME" \
    nvidia-cuda-nvcc==13.5.37 nvidia-cuda-runtime==13.5.37 nvidia-cuda-cccl==13.3.5.0.6 ||
    { echo "cuda-toolchain: pip could not install nvcc into $VITWB_CUDA_HOME" >&2; return 1; }
  "$vitwb_cuda_root/bin/nvcc" --version >/dev/null ||
    { echo "cuda-toolchain: $vitwb_cuda_root/bin/nvcc does not run after the install" >&2; return 1; }
fi
export PATH="$vitwb_cuda_root/bin:$PATH"
export CUDA_ROOT="$vitwb_cuda_root" CUDA_HOME="$vitwb_cuda_root"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
