#!/usr/bin/env bash
# Fetches libtorch 2.11.0 (CPU backend) from PyPI wheels into a cache folder, once,
# and prints the folder. The checkout never holds libtorch.
#   CAMP_CACHE   cache root (default ~/.cache/camp)
set -euo pipefail
cache="${CAMP_CACHE:-$HOME/.cache/camp}"
dest="$cache/libtorch-2.11.0"
# The CUDA runtime's headers (the runtime wheel's and the small crt wheel's, for
# the CUDA graph library, worker/build.rs) came later: a cache made before them
# gets them added.
cuda_headers() {
  ls "$cache/wheels"/nvidia_cuda_crt-13.0.88*.whl >/dev/null 2>&1 \
    || "$py" -m pip download --quiet --no-deps --only-binary=:all: 'nvidia-cuda-crt==13.0.88' -d "$cache/wheels" >&2
  "$py" - "$cache/wheels" "$1" <<'PY'
import glob, os, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
prefix = "nvidia/cu13/include/"
for pattern in ("nvidia_cuda_runtime-13.0.96*.whl", "nvidia_cuda_crt-13.0.88*.whl"):
    with zipfile.ZipFile(glob.glob(os.path.join(wheels, pattern))[0]) as z:
        for info in z.infolist():
            if info.filename.startswith(prefix) and not info.filename.endswith("/"):
                path = os.path.join(out, "cuda-include", info.filename[len(prefix):])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with z.open(info) as src, open(path, "wb") as dst:
                    dst.write(src.read())
PY
}
py=$(command -v python3 || command -v python) || { echo "libtorch.sh: python3 with pip is needed to fetch the torch wheel" >&2; exit 1; }
if [ -f "$dest/.complete" ]; then
  if [ ! -f "$dest/cuda-include/crt/host_defines.h" ]; then
    ls "$cache/wheels"/nvidia_cuda_runtime-13.0.96*.whl >/dev/null 2>&1 \
      || "$py" -m pip download --quiet --no-deps --only-binary=:all: 'nvidia-cuda-runtime==13.0.96.*' -d "$cache/wheels" >&2
    cuda_headers "$dest"
  fi
  echo "$dest"; exit 0
fi

wheels="$cache/wheels"
mkdir -p "$wheels"
ls "$wheels"/torch-2.11.0-*.whl >/dev/null 2>&1 \
  || "$py" -m pip download --quiet --no-deps --only-binary=:all: torch==2.11.0 -d "$wheels" >&2
ls "$wheels"/nvidia_cuda_runtime-13.0.96*.whl >/dev/null 2>&1 \
  || "$py" -m pip download --quiet --no-deps --only-binary=:all: 'nvidia-cuda-runtime==13.0.96.*' -d "$wheels" >&2
ls "$wheels"/nvidia_cuda_cupti-13.0.85*.whl >/dev/null 2>&1 \
  || "$py" -m pip download --quiet --no-deps --only-binary=:all: 'nvidia-cuda-cupti==13.0.85.*' -d "$wheels" >&2

tmp="$dest.tmp"
rm -rf "$tmp" && mkdir -p "$tmp/lib"
# The wheel's torch/include and torch/lib form a complete libtorch; the CUDA backend
# (libtorch_cuda*), nvshmem, nvrtc and the Python bindings are left out so that the
# build links the CPU backend only. A GPU machine loads libtorch_cuda from its own torch.
"$py" - "$wheels" "$tmp" <<'PY'
import glob, os, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
skip = ("libtorch_cuda", "libc10_cuda", "libtorch_nvshmem", "libnvshmem", "libcaffe2_nvrtc", "libnvrtc", "libtorch_python", "libshm")
with zipfile.ZipFile(glob.glob(os.path.join(wheels, "torch-2.11.0-*.whl"))[0]) as z:
    for info in z.infolist():
        n = info.filename
        if n.startswith("torch/include/"):
            z.extract(info, out)
        elif n.startswith("torch/lib/") and not n.endswith("/"):
            base = os.path.basename(n)
            if base.startswith(skip):
                continue
            with z.open(info) as src, open(os.path.join(out, "lib", base), "wb") as dst:
                dst.write(src.read())
for pattern in ("nvidia_cuda_runtime-13.0.96*.whl", "nvidia_cuda_cupti-13.0.85*.whl"):
    with zipfile.ZipFile(glob.glob(os.path.join(wheels, pattern))[0]) as z:
        for info in z.infolist():
            base = os.path.basename(info.filename)
            if "/lib/" in info.filename and (base.startswith("libcudart.so") or base.startswith("libcupti.so")):
                with z.open(info) as src, open(os.path.join(out, "lib", base), "wb") as dst:
                    dst.write(src.read())
PY
mv "$tmp/torch/include" "$tmp/include" && rm -rf "$tmp/torch"
cuda_headers "$tmp"
touch "$tmp/.complete"
rm -rf "$dest" && mv "$tmp" "$dest"
echo "$dest"
