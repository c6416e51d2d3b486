#!/usr/bin/env bash
# Make detectron2 importable in the given Python environment.
#
# Route 1: an installed detectron2 (e.g. built from git by a stack user) is used as it is.
# Route 2: otherwise install upstream detectron2's *Python code* from the `sal-detectron2==0.7.2` wheel on
# PyPI.  That wheel is cp310-only and its compiled `_C` extension targets another torch, so we unpack
# the pure-Python `detectron2/` package without `_C*.so`.  Features that need `_C` (rotated boxes,
# deformable conv, detectron2's fast COCOeval) fail with a clear message or fall back (pycocotools).
set -euo pipefail
PY=${1:?usage: install-detectron2.sh PYTHON}
if "$PY" -c "import detectron2.modeling" 2>/dev/null; then
    echo "detectron2 already importable: $("$PY" -c 'import detectron2; print(detectron2.__file__)')"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
    --platform manylinux2014_x86_64 --platform linux_x86_64 -d "$tmp" sal-detectron2==0.7.2
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$PY" - "$tmp" "$site" <<'PYEOF'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("sal_detectron2-*.whl"))
site = pathlib.Path(sys.argv[2])
n = 0
with zipfile.ZipFile(wheel) as zf:
    for member in zf.namelist():
        name = pathlib.PurePosixPath(member)
        if name.parts[0] != "detectron2" or (len(name.parts) == 2 and name.name.startswith("_C")):
            continue
        zf.extract(member, site)
        n += 1
print(f"installed {n} files of detectron2 (Python code only, no _C) from {wheel.name} into {site}")
PYEOF
"$PY" -c "import detectron2.modeling, detectron2.engine; print('detectron2 import OK')"
