# Training schedule of the compact demo model shipped in models/ (see bin/train-demo-model.sh).
# From random weights (nothing is downloaded) on CPU: a noise-adaptive asinh scaling, 256 px tiles,
# AdamW, a short heads-only warm start then all layers with one step decay.
config.architecture = "compact-R18-FPN"
config.modelName = "deepdisc-compact-sim"
config.modelVersion = "1.0"
config.modelOverrides = {
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 256,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 3000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1500,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.5,
}
# asinh(flux / noise) per band: independent of flux units and depth, finite everywhere.
config.scalingName = "asinh_per_band"
config.scalingParams = {"softening_sigma": 1.0}
config.tileSize = 256
config.validationFraction = 0.125
config.scheduleUnit = "iteration"
config.headsLength = 50
config.fullLength = 1450
config.lrSteps = [1100]
config.optimizer = "adamw"
config.headsLr = 1e-3
config.fullLr = 5e-4
config.warmupIterations = 50
config.batchSize = 2
config.cropFraction = 0.0
config.evalPeriod = 250
config.checkpointPeriod = 100
config.logPeriod = 25
config.device = "auto"
config.seed = 7
