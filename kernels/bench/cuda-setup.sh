#!/bin/bash
# Prepares a GPU-less build machine for `--features cuda` builds (TOOLCHAIN.md section 3):
# a CUDA_HOME of symlinks into the pip wheels, an env file, and a libcuda.so stub holding
# every driver symbol the compiled rlibs reference (the real driver replaces it at run time).
# Run once after `pip install` of the wheels, and again (for the stub) after a first
# `cargo build --features cuda` has compiled cudarc and candle-core.
set -euo pipefail
C=$HOME/.cache/openledger
SP=$(readlink -f "$(ls -d "$C"/cuda-venv/lib/python3*/site-packages/nvidia/cu13)")
mkdir -p "$C/cuda-home/lib64"
ln -sfn "$SP/bin" "$C/cuda-home/bin"
ln -sfn "$SP/include" "$C/cuda-home/include"
ln -sfn "$SP/nvvm" "$C/cuda-home/nvvm"
cd "$C/cuda-home/lib64"
for f in "$SP"/lib/*; do ln -sf "$f" .; done
ln -sf libcudart.so.13 libcudart.so; ln -sf libcublas.so.13 libcublas.so
ln -sf libcublasLt.so.13 libcublasLt.so; ln -sf libcurand.so.10 libcurand.so
ln -sf libnvrtc.so.13 libnvrtc.so
cat > "$C/cuda-env.sh" <<ENV
export CUDA_HOME=$C/cuda-home
export PATH=$C/cuda-home/bin:\$PATH
export CUDA_COMPUTE_CAP=90
export CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH=$C/cuda-home/lib64:\${LIBRARY_PATH:-}
export CARGO_TARGET_DIR=\${CARGO_TARGET_DIR:-$C/target-kernels}
ENV
DEPS=${CARGO_TARGET_DIR:-$C/target-kernels}/release/deps
if ls "$DEPS"/libcudarc-*.rlib >/dev/null 2>&1; then
  nm -u --format=posix "$DEPS"/*.rlib 2>/dev/null | awk '{print $1}' | grep -E '^cu[A-Z]' | sort -u \
    | awk '{print "void " $1 "(void) {}"}' > /tmp/libcuda_stub.c
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$C/cuda-home/lib64/libcuda.so" /tmp/libcuda_stub.c
  ln -sf libcuda.so "$C/cuda-home/lib64/libcuda.so.1"
  echo "libcuda stub: $(wc -l < /tmp/libcuda_stub.c) symbols"
fi
