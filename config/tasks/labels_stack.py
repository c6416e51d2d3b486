# Read the scarlet models of a Rubin DRP repository (storage class LsstScarletModelData).
#   pipetask run ... -p pipelines/DeepDiscTrain.yaml#labels \
#       -C labels:$MEAS_EXTENSIONS_DEEPDISC_DIR/config/tasks/labels_stack.py
# The Butler needs meas_extensions_scarlet to read them (the Rubin stack).
config.scarletModelStorageClass = "LsstScarletModelData"
