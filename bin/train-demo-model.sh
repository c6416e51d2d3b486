#!/usr/bin/env bash
# Reproduce models/deepdisc-compact-sim.zip, the compact model that `make demo` uses.
#
# It is trained only on simulated data that the demo never sees: the `train` preset (tracts 0 and 1: 32
# patches of 1024 px with varied seeing, depth, density and NO_DATA; 4 patches of tract 2 validate), whose
# seeds are disjoint from the demo's (`small`, seed 2024).  Labels come from the simulated deblender's
# scarlet-format models and the object table, exactly as on a real DRP repository, with classes from the
# truth table as a reference catalog (config/tasks/labels_reference_classes.py).  Three stages: the recipe
# config/tasks/train_cpu_scale.py from random weights, then config/tasks/train_cpu_finetune.py (band
# dropout, pixel-scale and seeing augmentation, artifact classes) from the stage-1 weights, then
# config/tasks/train_cpu_artifacts.py (binned examples, where the large faint artifacts are learned) from
# the stage-2 weights; last, the second stage of the stage-3 network: its star-galaxy classifiers
# (pipelines/DeepDiscStarGalaxy.yaml) and its reliability classifier (pipelines/DeepDiscReliability.yaml).
#
#   bin/train-demo-model.sh [WORKDIR] [EXTRA PIPETASK CONFIG...]
#       (default WORKDIR: train_work/; CPU: ~20 min to simulate and label, then ~65 + ~75 + ~70 min of
#        training on 2 idle cores and ~30 min for the second stage (reliability and star-galaxy classifiers);
#        an interrupted run resumes where it
#        stopped when the same command is re-run)
#
# Examples and checkpoints are kept under WORKDIR/checkpoints, so a re-run rebuilds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory setup
WORK=${1:-train_work}
shift || true
REPO=$WORK/repo
export DAF_BUTLER_CONFIG_PATH="$PWD/python/lsst/meas/extensions/deepdisc/butler/configs${DAF_BUTLER_CONFIG_PATH:+:$DAF_BUTLER_CONFIG_PATH}"
export DEEPDISC_CHECKPOINT_ROOT="$WORK/checkpoints"
BIN=.venv/bin
SKYMAP=deepdisc_sim_train

"$BIN/deepdisc-sim-repo" --preset train --collection sim/train --tracts 0 1 -j 2 "$REPO"
"$BIN/deepdisc-sim-repo" --preset train --collection sim/train --tracts 2 --patches 5 6 9 10 -j 2 "$REPO"
# Labels in parallel (one process per patch; a re-run makes only the missing ones), then the training
# quanta.  pipetask gives each quantum --cores-per-quantum cores, which the training uses as torch threads:
# give it the free cores ($CORES, default 2).
SKIP=()
if "$BIN/butler" query-collections "$REPO" u/deepdisc/labels-demo 2>/dev/null | grep -q labels-demo; then
    SKIP=(--skip-existing-in u/deepdisc/labels-demo)
fi
"$BIN/pipetask" run -b "$REPO" -i sim/train -o u/deepdisc/labels-demo \
    -p pipelines/DeepDiscTrain.yaml#labels \
    -C labels:config/tasks/labels_reference_classes.py \
    -d "skymap='$SKYMAP'" --register-dataset-types -j 2 "${SKIP[@]}"
# Stage 1: star/galaxy model on all six bands, from random weights.
"$BIN/pipetask" run -b "$REPO" -i sim/train,u/deepdisc/labels-demo -o u/deepdisc/train-demo \
    -p pipelines/DeepDiscTrain.yaml#train \
    -C train:config/tasks/train_cpu_scale.py "$@" \
    -d "skymap='$SKYMAP'" --register-dataset-types -j 1 --cores-per-quantum "${CORES:-2}"
"$BIN/deepdisc-model" export "$REPO" u/deepdisc/train-demo --output "$WORK/stage1.zip" --force
# Stage 2: fine-tuned with band dropout, pixel-scale and seeing augmentation, and artifact classes.
"$BIN/pipetask" run -b "$REPO" -i sim/train,u/deepdisc/labels-demo -o u/deepdisc/train-final \
    -p pipelines/DeepDiscTrain.yaml#train \
    -C train:config/tasks/train_cpu_finetune.py -c "train:initCheckpoint=$(realpath -m "$WORK/stage1.zip")" "$@" \
    -d "skymap='$SKYMAP'" --register-dataset-types -j 1 --cores-per-quantum "${CORES:-2}"
"$BIN/deepdisc-model" export "$REPO" u/deepdisc/train-final --output "$WORK/stage2.zip" --half --force
# Stage 3: binned examples with artifacts drawn at the binned scale (the large, faint ghosts).
"$BIN/pipetask" run -b "$REPO" -i sim/train,u/deepdisc/labels-demo -o u/deepdisc/train-artifacts \
    -p pipelines/DeepDiscTrain.yaml#train \
    -C train:config/tasks/train_cpu_artifacts.py -c "train:initCheckpoint=$(realpath -m "$WORK/stage2.zip")" "$@" \
    -d "skymap='$SKYMAP'" --register-dataset-types -j 1 --cores-per-quantum "${CORES:-2}"
"$BIN/deepdisc-model" export "$REPO" u/deepdisc/train-artifacts --output "$WORK/stage3.zip" --half --force
# Stage 4: the second stage, fitted on the stage-3 network's detections of the training patches against the
# truth table (core.star_galaxy).  The star-galaxy classifiers (PSF-matched excess, colours, the network's
# log-odds; thresholds from out-of-fold predictions) on the detections of the network's operating point: one
# for all six bands, then one trained with band subsets (any 3 or more bands).  Then the reliability
# classifiers (is a candidate detection scoring >= 0.2 a real source? threshold for an out-of-fold purity of
# 0.98), again one for all six bands and one with band subsets.  All go into the package, each kind in that
# order (about 30 min).
"$BIN/deepdisc-model" ingest "$REPO" "$WORK/stage3.zip" --name deepdisc-compact-sim-stage3 --replace
"$BIN/pipetask" run -b "$REPO" -i sim/train,pretrained_models/deepdisc-compact-sim-stage3 -o u/deepdisc/star-galaxy \
    -p pipelines/DeepDiscStarGalaxy.yaml -c train:validationTracts=[2] -c train:minBands=0 \
    -d "skymap='$SKYMAP'" --register-dataset-types -j "${CORES:-2}"
"$BIN/pipetask" run -b "$REPO" -i u/deepdisc/star-galaxy -o u/deepdisc/star-galaxy-subsets \
    -p "pipelines/DeepDiscStarGalaxy.yaml#train" -c train:validationTracts=[2] -c train:minBands=3 \
    -d "skymap='$SKYMAP'" --register-dataset-types -j 1 --cores-per-quantum "${CORES:-2}"
"$BIN/pipetask" run -b "$REPO" -i sim/train,pretrained_models/deepdisc-compact-sim-stage3 -o u/deepdisc/reliability \
    -p pipelines/DeepDiscReliability.yaml -c train:validationTracts=[2] \
    -d "skymap='$SKYMAP'" --register-dataset-types -j "${CORES:-2}"
"$BIN/pipetask" run -b "$REPO" -i u/deepdisc/reliability -o u/deepdisc/reliability-subsets \
    -p "pipelines/DeepDiscReliability.yaml#train" -c train:validationTracts=[2] -c train:minBands=3 \
    -d "skymap='$SKYMAP'" --register-dataset-types -j 1 --cores-per-quantum "${CORES:-2}"
"$BIN/deepdisc-model" star-galaxy "$WORK/stage3.zip" --repo "$REPO" \
    --collection u/deepdisc/star-galaxy u/deepdisc/star-galaxy-subsets \
    --version stage3-star-galaxy --output "$WORK/stage3-star-galaxy.zip" --force
mkdir -p models
"$BIN/deepdisc-model" reliability "$WORK/stage3-star-galaxy.zip" --repo "$REPO" \
    --collection u/deepdisc/reliability u/deepdisc/reliability-subsets \
    --version 3.7 --output models/deepdisc-compact-sim.zip --force
"$BIN/deepdisc-model" inspect models/deepdisc-compact-sim.zip
