#!/usr/bin/env bash
# Reproduce models/deepdisc-compact-sim.zip, the compact model that `make demo` uses.
#
# It is trained only on simulated data that the demo never sees: the `small` preset with seed 7
# (the demo's repository uses the preset's own seed, 2024). Labels come from the simulated deblender's
# scarlet-format models and the object table, exactly as on a real DRP repository.
#
#   bin/train-demo-model.sh [WORKDIR]     (default WORKDIR: train_work/; CPU: ~1-2 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory setup
WORK=${1:-train_work}
REPO=$WORK/repo
export DAF_BUTLER_CONFIG_PATH="$PWD/python/lsst/meas/extensions/deepdisc/butler/configs${DAF_BUTLER_CONFIG_PATH:+:$DAF_BUTLER_CONFIG_PATH}"
export DEEPDISC_CHECKPOINT_ROOT="$WORK/checkpoints"
BIN=.venv/bin

"$BIN/deepdisc-sim-repo" --preset small --seed 7 --collection sim/small-train "$REPO"
"$BIN/pipetask" run -b "$REPO" -i sim/small-train -o u/deepdisc/train-demo \
    -p pipelines/DeepDiscTrain.yaml \
    -C labels:config/tasks/labels_deepdisc.py \
    -C train:config/tasks/train_cpu_demo.py \
    -d "skymap='deepdisc_sim_small'" --register-dataset-types -j 1
mkdir -p models
"$BIN/deepdisc-model" export "$REPO" u/deepdisc/train-demo --output models/deepdisc-compact-sim.zip --half --force
"$BIN/deepdisc-model" inspect models/deepdisc-compact-sim.zip
