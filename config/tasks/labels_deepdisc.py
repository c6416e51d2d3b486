# DeepDISC's label rule (Merz et al. 2023): footprint where the model reaches 5 sigma of the background on the
# detection image (the sum of the bands); images with more than 30% NO_DATA dropped.
#   pipetask run ... -C labels:$MEAS_EXTENSIONS_DEEPDISC_DIR/config/tasks/labels_deepdisc.py
config.thresholdMode = "background_sigma"
config.sigmaThreshold = 5.0
config.detectionWeighting = "sum"
config.maxNoDataFraction = 0.3
