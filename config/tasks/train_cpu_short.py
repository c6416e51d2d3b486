# A short CPU training schedule for tests and demonstrations on the small simulated repositories (the `tiny`
# preset: 256 px patches): 128 px tiles, 40 iterations (10 heads-only + 30 all layers) of batch 2 with a high
# learning rate, a compact model with fewer proposals, validation and a checkpoint every 10 iterations.
# The loss drops visibly in well under a minute on one CPU core; the model is not a useful detector.
#   pipetask run ... -p pipelines/DeepDiscTrain.yaml \
#       -C train:$MEAS_EXTENSIONS_DEEPDISC_DIR/config/tasks/train_cpu_short.py
config.architecture = "compact-R18-FPN"
config.modelOverrides = {
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 300,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 100,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 600,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 300,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 64,
}
config.tileSize = 128
config.validationFraction = 0.5
config.scheduleUnit = "iteration"
config.headsLength = 10
config.fullLength = 30
config.lrSteps = [20]
config.headsLr = 0.02
config.fullLr = 0.02
config.batchSize = 2
config.cropFraction = 0.0
config.evalPeriod = 10
config.checkpointPeriod = 10
config.logPeriod = 5
config.device = "cpu"
config.amp = False
