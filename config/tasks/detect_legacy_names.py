# Read coadds under their legacy (Gen3 HSC RC2 era) dataset name `deepCoadd_calexp` as afw ExposureF.
#   pipetask run ... -p pipelines/DeepDisc.yaml \
#       -C detect:$MEAS_EXTENSIONS_DEEPDISC_DIR/config/tasks/detect_legacy_names.py
# ExposureF inputs need lsst.afw (the Rubin stack).
config.connections.coadds = "deepCoadd_calexp"
config.coaddStorageClass = "ExposureF"
