#!/usr/bin/env bash
# Downloads the wheels the GPU machine's image lacks (it has no network) into benchmarks/wheels/
# (git-ignored; the device tool carries it: carry=["benchmarks/wheels"]). benchmarks/gpu_check.py
# installs them there with `pip install --no-index --no-deps --target`. Target: CPython 3.12, x86-64.
# bitsandbytes keeps only its CUDA 13.0 (the image's torch is +cu130) and CPU libraries: 41 MiB -> ~3 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=benchmarks/wheels
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$DIR"
# pymoo 0.6.2 and what it imports that the image lacks (it has numpy, scipy, matplotlib).
PKGS=(pymoo==0.6.2 moocore==0.3.2 cffi==2.1.1 pycparser==3.12 platformdirs==4.14.9 alive-progress==3.3.0
      graphemeu==0.7.2 about-time==4.2.1 autograd==1.9.1 cma==4.5.0 Deprecated==1.3.1 wrapt==2.5.2
      bitsandbytes==0.50.2 gguf==0.19.0)
PLAT=()
for p in manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do PLAT+=(--platform "$p"); done
for pkg in "${PKGS[@]}"; do  # one at a time: a missing one is named, the others still come
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLAT[@]}" -d "$DIR" "$pkg" 2>&1 | grep -v "is ignored" || true
done
"$PY" - "$DIR" <<'PY'
import sys, zipfile, pathlib, re
d = pathlib.Path(sys.argv[1])
for whl in d.glob("bitsandbytes-*.whl"):
    keep = lambda n: not re.search(r"libbitsandbytes_(cuda|rocm|xpu|hip)", n) or "cuda130" in n
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        if all(keep(n) for n in names):
            continue
        tmp = whl.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for n in names:
                if not keep(n):
                    continue
                data = z.read(n)
                if n.endswith(".dist-info/RECORD"):  # drop the removed libraries' lines
                    data = "".join(l for l in data.decode().splitlines(True) if keep(l.split(",")[0])).encode()
                out.writestr(z.getinfo(n), data)
    tmp.replace(whl)
PY
ls -la "$DIR"
du -sh "$DIR"
