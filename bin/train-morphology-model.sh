#!/usr/bin/env bash
# Reproduce models/deepdisc-morphology-sim.zip, the Hubble-type classifier of pipelines/DeepDiscMorphology.yaml.
#
# Data: the `morphology` simulation preset (galaxies with Hubble types and truth, sim/morphology.py), tracts 0
# and 1 train, tract 2 validates, tract 3 is held out and evaluated at the end.  The shipped detection model
# (models/deepdisc-compact-sim.zip) finds the galaxies; `labels` matches truth_patch.morph_type to them, so the
# classifier learns on our own footprints, as it runs; `train` uses config/tasks/train_morphology_sim.py.
#
#   bin/train-morphology-model.sh [WORKDIR] [EXTRA PIPETASK CONFIG...]
#       (default WORKDIR: train_morphology_work/; CPU: ~3 min to simulate 16 patches, ~2 min to detect,
#        ~2 min to train on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory setup
WORK=${1:-train_morphology_work}
shift || true
REPO=$WORK/repo
export DAF_BUTLER_CONFIG_PATH="$PWD/python/lsst/meas/extensions/deepdisc/butler/configs${DAF_BUTLER_CONFIG_PATH:+:$DAF_BUTLER_CONFIG_PATH}"
BIN=.venv/bin
SKYMAP=deepdisc_sim_morphology
WHERE_TRAIN="skymap='$SKYMAP' AND tract IN (0, 1, 2)"
WHERE_HELD_OUT="skymap='$SKYMAP' AND tract=3"

"$BIN/deepdisc-sim-repo" --preset morphology -j 2 "$REPO"
"$BIN/deepdisc-model" ingest "$REPO" models/deepdisc-compact-sim.zip --name deepdisc-compact-sim
"$BIN/pipetask" run -b "$REPO" -i sim/morphology,pretrained_models/deepdisc-compact-sim -o u/deepdisc/morph-detect \
    -p pipelines/DeepDisc.yaml -d "skymap='$SKYMAP'" --register-dataset-types -j 2
"$BIN/pipetask" run -b "$REPO" -i u/deepdisc/morph-detect,sim/morphology -o u/deepdisc/morph-labels \
    -p pipelines/DeepDiscMorphology.yaml#labels -d "skymap='$SKYMAP'" --register-dataset-types -j 2
"$BIN/pipetask" run -b "$REPO" -i u/deepdisc/morph-labels,u/deepdisc/morph-detect,sim/morphology \
    -o u/deepdisc/morph-train -p pipelines/DeepDiscMorphology.yaml#train \
    -C train:config/tasks/train_morphology_sim.py -c "train:numThreads=${CORES:-2}" "$@" \
    -d "$WHERE_TRAIN" --register-dataset-types -j 1 --cores-per-quantum "${CORES:-2}"
mkdir -p models
"$BIN/deepdisc-model" export "$REPO" u/deepdisc/morph-train --morphology \
    --output models/deepdisc-morphology-sim.zip --force
# Held-out tract: classify and report (metrics and figures in $WORK/report).
"$BIN/pipetask" run -b "$REPO" -i u/deepdisc/morph-train,u/deepdisc/morph-labels,u/deepdisc/morph-detect,sim/morphology \
    -o u/deepdisc/morph-held-out -p pipelines/DeepDiscMorphology.yaml#morphology -d "$WHERE_HELD_OUT" \
    --register-dataset-types -j 2
"$BIN/deepdisc-morphology-report" "$REPO" \
    --collections u/deepdisc/morph-held-out,u/deepdisc/morph-labels,u/deepdisc/morph-detect,sim/morphology \
    --where "$WHERE_HELD_OUT" --output "$WORK/report"
