# Training schedule of the compact demo model shipped in models/ (see bin/train-demo-model.sh).
# From random weights (nothing is downloaded) on CPU: a noise-adaptive asinh scaling, 256 px tiles,
# AdamW, a short heads-only warm start then all layers with one step decay.
config.architecture = "compact-R18-FPN"  # noqa: F821
config.modelName = "deepdisc-compact-sim"  # noqa: F821
config.modelVersion = "1.0"  # noqa: F821
config.modelOverrides = {  # noqa: F821
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 256,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 3000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1500,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.5,
}
# asinh(flux / noise) per band: independent of flux units and depth, finite everywhere.
config.scalingName = "asinh_per_band"  # noqa: F821
config.scalingParams = {"softening_sigma": 1.0}  # noqa: F821
config.tileSize = 256  # noqa: F821
config.validationFraction = 0.125  # noqa: F821
config.scheduleUnit = "iteration"  # noqa: F821
config.headsLength = 50  # noqa: F821
config.fullLength = 1450  # noqa: F821
config.lrSteps = [1100]  # noqa: F821
config.optimizer = "adamw"  # noqa: F821
config.headsLr = 1e-3  # noqa: F821
config.fullLr = 5e-4  # noqa: F821
config.warmupIterations = 50  # noqa: F821
config.batchSize = 2  # noqa: F821
config.cropFraction = 0.0  # noqa: F821
config.evalPeriod = 250  # noqa: F821
config.checkpointPeriod = 100  # noqa: F821
config.logPeriod = 25  # noqa: F821
config.device = "auto"  # noqa: F821
config.seed = 7  # noqa: F821
