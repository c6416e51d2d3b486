# Labels of the shipped model (bin/train-demo-model.sh): footprints from the deblender's models with the
# default rule (1 sigma of the inverse-variance weighted detection image, aligned with how the truth and
# survey footprints are defined), classes from a reference catalog, as DeepDISC does with HST/COSMOS for
# HSC: here the simulation's truth table.  A source with no reference object within 1 arcsec and 1 mag keeps
# its object-table extendedness class, so that every deblended source stays a label.
#   pipetask run ... -C labels:$MEAS_EXTENSIONS_DEEPDISC_DIR/config/tasks/labels_reference_classes.py
config.classSource = "reference"
config.referenceMagColumn = "mag_{band}"
config.referenceMaxDeltaMag = 1.0
config.referenceMatchRadius = 1.0
config.referenceUnmatched = "extendedness"
