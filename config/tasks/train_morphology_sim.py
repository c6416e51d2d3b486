# Morphology classifier of the shipped package (models/deepdisc-morphology-sim.zip): compact CNN on the
# `morphology` simulation preset, tracts 0-1 train, tract 2 validates (tract 3 is held out: leave it out of
# the -d query).  About 25 min on 2 CPU cores.  Reproduced by bin/train-morphology-model.sh.
config.packageName = "deepdisc-morphology-sim"
config.packageVersion = "1.0"
config.architecture = "compact_cnn"
config.validationTracts = [2]
config.maxMagnitude = 23.0
config.epochs = 30
config.batchSize = 64
config.imbalance = "loss_weights"
