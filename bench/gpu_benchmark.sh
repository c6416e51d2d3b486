#!/usr/bin/env bash
# GPU benchmark of DeepDISC detection: the shipped compact package and R50-FPN (random weights, capped at
# a realistic number of detections per tile), both with fp16 autocast, through the detection task's own
# run (bench/bench_detect_scaling.py), on simulated LSST patches; then the sparse NMS against torchvision's
# on the device (bench/bench_nms_device.py), the tests that need a CUDA device and a profile of one run of
# each model (bench/profile_detect.py).
#
# Two steps, both from the repository root:
#
#   bench/gpu_benchmark.sh prepare     on a machine with this project's venv and network access: installs
#                                      what the GPU machine lacks into a scratch directory, strips the
#                                      debugging symbols from its shared libraries (galsim's alone are
#                                      190 MB) and packs it into .gpu/site.tar.xz (git-ignored; about
#                                      23 MB, carried to the GPU machine with the working tree: keep it
#                                      under the transfer limit), then runs check
#   bench/gpu_benchmark.sh check       the whole run on the CPU on a 512 px patch, by an interpreter that
#                                      sees only the venv's copies of the image's packages and the archive
#   bench/gpu_benchmark.sh run [OUT]   on the GPU machine (no network needed): unpacks .gpu/site.tar.xz
#                                      into a scratch directory unless the imports already work, simulates
#                                      the patches (all cores draw the objects) and runs the benchmark;
#                                      results (.md, .json, the pytest log) go to OUT (default bench/results)
#
# The GPU machine needs only python3 (3.12, like the venv) with a CUDA build of torch and torchvision.
# Settings, by environment variable: SIZES (patch sides, default "1024 4100"), DENSITIES ("1"), BATCH
# (tiles per forward call, "16"), CAP (R50-FPN detections per tile, "375": 1.5 x sep's source density per
# 512 px tile on this patch), MODELS ("R50-FPN"; empty: the package only), DEVICE ("cuda"; "cpu" checks
# the script without a GPU), THREADS (torch CPU threads, all cores), METHOD_TIMEOUT (seconds after which
# a method is dropped and the others still run, "300": a lease is short), NMS ("1": also time the sparse
# NMS against torchvision's on the device with bench/bench_nms_device.py; "0": not), TESTS ("1": also run
# the tests that skip without CUDA; "0": not), PROFILE ("1": also profile one run of each model at the
# first size with bench/profile_detect.py; "0": not), EXTRA (more options for bench_detect_scaling.py).
set -euo pipefail

cd "$(dirname "$0")/.."
GPU_DIR=.gpu
SITE=${DEEPDISC_SITE:-/tmp/deepdisc-site}
# Runtime needs of the package and the benchmark that the GPU image may lack (their own dependencies are
# added from the venv's metadata); sep for the simulation's deblender module (the CPU baselines do not run
# there).
ROOTS="lsst-pipe-base lsst-daf-butler lsst-pex-config lsst-utils lsst-images lsst-resources lsst-sphgeom
astropy galsim sep surveycodex pycocotools fvcore iopath omegaconf hydra-core yacs termcolor"
# Packages of the GPU image (see the device notes), never downloaded: torch and friends stay the image's.
IMAGE_HAS="torch torchvision numpy scipy pandas pyarrow pyyaml psutil matplotlib pillow safetensors
requests urllib3 idna certifi charset-normalizer packaging typing-extensions click tqdm tabulate
cloudpickle portalocker filelock fsspec jinja2 markupsafe networkx sympy mpmath setuptools six
python-dateutil contourpy cycler fonttools kiwisolver pyparsing timm huggingface-hub protobuf wrapt
pygments rich markdown-it-py mdurl pybind11 threadpoolctl pytest pluggy iniconfig hypothesis sortedcontainers
attrs"

prepare() {
    local python=${PYTHON:-.venv/bin/python}
    local scratch
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' RETURN
    mkdir -p "$scratch/wheels/detectron2" "$scratch/site"
    # The closure of ROOTS at the versions installed in the venv, minus what the image has.
    local pins
    pins=$("$python" - "$ROOTS" "$IMAGE_HAS" <<'PYEOF'
import re
import sys
from importlib import metadata

from packaging.markers import Marker

def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()

have = {key(n) for n in sys.argv[2].split()}
todo, pins = sys.argv[1].split(), {}
while todo:
    name = todo.pop()
    if key(name) in pins or key(name) in have:
        continue
    dist = metadata.distribution(name)
    pins[key(name)] = f"{dist.metadata['Name']}=={dist.version}"
    for requirement in dist.requires or []:
        spec, _, marker = requirement.partition(";")
        if marker and ("extra" in marker or not Marker(marker).evaluate()):
            continue
        todo.append(re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0])
print("\n".join(sorted(pins.values())))
PYEOF
)
    echo "packing: $(echo "$pins" | tr '\n' ' ')"
    # pip wheel takes the published wheel where there is one and builds pure-Python sdists (fvcore...).
    # shellcheck disable=SC2086
    "$python" -m pip wheel --quiet --no-deps -w "$scratch/wheels" $pins
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$scratch/site" \
        "$scratch"/wheels/*.whl
    # detectron2's Python code, from the wheel install-detectron2.sh unpacks (cp310-tagged; no _C).
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
        --platform manylinux2014_x86_64 --platform linux_x86_64 -d "$scratch/wheels/detectron2" \
        sal-detectron2==0.7.2
    "$python" - "$scratch/wheels/detectron2" "$scratch/site" <<'PYEOF'
import pathlib
import sys
import zipfile

wheel = next(pathlib.Path(sys.argv[1]).glob("sal_detectron2-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    for member in archive.namelist():
        path = pathlib.PurePosixPath(member)
        if path.parts[0] == "detectron2" and not (len(path.parts) == 2 and path.name.startswith("_C")):
            archive.extract(member, sys.argv[2])
PYEOF
    find "$scratch/site" -name '*.so*' -type f -exec strip --strip-debug {} +
    mkdir -p "$GPU_DIR"
    tar -C "$scratch/site" -cf - . | xz -T0 -6 >"$GPU_DIR/site.tar.xz"
    du -sh "$GPU_DIR/site.tar.xz"
    check
    echo "run on the GPU machine: bench/gpu_benchmark.sh run (with $GPU_DIR/ carried)"
}

check() {
    # The whole run on the CPU (a 512 px patch), by an interpreter that sees only the venv's copies of the
    # image's packages (IMAGE_HAS, CUDA's libraries) and the archive: a runtime need missing from
    # .gpu/site.tar.xz fails here, not on the lent machine.
    local python=${PYTHON:-.venv/bin/python}
    local scratch
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' RETURN
    mkdir -p "$scratch/image" "$scratch/bin"
    "$python" - "$scratch/image" "$IMAGE_HAS" <<'PYEOF'
import os
import re
import sys
from importlib import metadata

def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()

target, wanted = sys.argv[1], {key(n) for n in sys.argv[2].split()}
for dist in metadata.distributions():
    name = key(dist.metadata["Name"])
    if name in wanted or name.startswith(("nvidia-", "cuda-")) or name == "triton":
        for top in {f.parts[0] for f in dist.files or [] if len(f.parts) > 1 or f.suffix in (".py", ".so")}:
            source = dist.locate_file(top)
            if os.path.exists(source) and not os.path.exists(os.path.join(target, top)):
                os.symlink(source, os.path.join(target, top))
PYEOF
    printf '#!/bin/sh\nexec "%s" -S "$@"\n' "$(readlink -f "$python")" >"$scratch/bin/python3"
    chmod +x "$scratch/bin/python3"
    PATH="$scratch/bin:$PATH" PYTHONPATH="$scratch/image" DEEPDISC_SITE="$scratch/site" DEVICE=cpu \
        SIZES=512 THREADS=2 BATCH=4 TESTS=1 run "$scratch/out" >"$scratch/log" 2>&1 || {
        tail -30 "$scratch/log"
        echo "check failed: the archive lacks a runtime need (log above)" >&2
        return 1
    }
    grep -E "R50-FPN|skipped|passed" "$scratch/log" | tail -3
    echo "check passed: the benchmark ran on the CPU with the image's packages and the archive alone"
}

install() {
    if python3 -c "import lsst.pipe.base, lsst.images, astropy, galsim, sep, detectron2.modeling" 2>/dev/null; then
        return
    fi
    [ -f "$GPU_DIR/site.tar.xz" ] || { echo "no $GPU_DIR/site.tar.xz: run 'bench/gpu_benchmark.sh prepare' first" >&2; exit 2; }
    mkdir -p "$SITE"
    tar -C "$SITE" -xJf "$GPU_DIR/site.tar.xz"
}

run() {
    local out=${1:-bench/results}
    mkdir -p "$out"
    export PYTHONPATH="$PWD/python:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    export DAF_BUTLER_CONFIG_PATH="$PWD/python/lsst/meas/extensions/deepdisc/butler/configs"
    export MEAS_EXTENSIONS_DEEPDISC_DIR="$PWD" PYTHONUNBUFFERED=1
    install
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    if [ "${DEVICE:-cuda}" = cuda ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    fi
    # shellcheck disable=SC2086
    python3 bench/bench_detect_scaling.py --device "${DEVICE:-cuda}" --half \
        --sizes ${SIZES:-1024 4100} --densities ${DENSITIES:-1} --baselines --no-reference \
        --models ${MODELS-R50-FPN} --detections-cap "${CAP:-375}" --batch-size "${BATCH:-16}" \
        --threads "${THREADS:-$(nproc)}" --timeout "${METHOD_TIMEOUT:-300}" --out "$out" ${EXTRA:-} || status=$?
    if [ "${NMS:-1}" = 1 ]; then
        # The sparse NMS against torchvision's on the device: the operator, and R50-FPN's tiled inference
        # on the largest patch both ways (bench/bench_nms_device.py).
        local sizes=${SIZES:-1024 4100}
        python3 bench/bench_nms_device.py --device "${DEVICE:-cuda}" --half --size "${sizes##* }" \
            --batch-size "${BATCH:-16}" --threads "${THREADS:-$(nproc)}" --cap "${CAP:-375}" --out "$out" \
            || status=$?
    fi
    if [ "${TESTS:-1}" = 1 ]; then
        # The tests that skip without a CUDA device (fp16 inference, pinned batches, mixed-precision
        # training); -rs lists what still skipped and why.
        python3 -m pytest -q -rs -p no:cacheprovider -k cuda tests/test_inference.py tests/test_training.py \
            tests/test_nms.py \
            2>&1 | tee "$out/gpu-tests.log" || status=$?
    fi
    if [ "${PROFILE:-1}" = 1 ]; then
        # Where the time goes, by labelled stage and operator, at the first size (bench/profile_detect.py).
        local size=${SIZES:-1024 4100}
        for model in ${MODELS-R50-FPN} ""; do
            python3 bench/profile_detect.py --device "${DEVICE:-cuda}" --half --size "${size%% *}" \
                --batch-size "${BATCH:-16}" --threads "${THREADS:-$(nproc)}" --out "$out" \
                ${model:+--model "$model" --cap "${CAP:-375}"} || status=$?
        done
    fi
    return "${status:-0}"
}

case "${1:-}" in
    prepare) prepare ;;
    check) check ;;
    run) shift; run "$@" ;;
    *) sed -n '2,31p' "$0"; exit 2 ;;
esac
