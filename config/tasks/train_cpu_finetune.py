# Second stage of the shipped compact model (bin/train-demo-model.sh): fine-tune the stage-1 model
# (config/tasks/train_cpu_scale.py, random initialisation) so that it
#
# - runs on any subset of its bands: half of the training examples lose 1-5 of their 6 bands (uniformly
#   many, uniformly which), given to the network as NaN planes that its band-availability backbone turns
#   into zeros plus one availability plane per band (core/models/band_availability.py);
# - works on other instruments: half of the examples are resampled to a pixel scale of 0.17-0.27"/px and
#   blurred to a PSF FWHM of up to 1.4" (the training coadds: 0.2"/px, ~0.8"), with the noise restored;
# - finds image artifacts: ghosts, scattered-light patches, rays and streaks (core/artifacts.py) are drawn
#   into the examples and labelled artifact_ghost_bright / artifact_ghost_faint / artifact_rays.
#
# The stage-1 weights start it (initCheckpoint, set by bin/train-demo-model.sh): the first convolution
# grows availability channels initialised to zero and the class layers grow three artifact classes, so
# training starts from the stage-1 model's behaviour on full-band data.
import os

config.load(os.path.join(os.path.dirname(__file__), "train_cpu_scale.py"))
config.modelVersion = "3.1"
config.classNames = ["star", "galaxy", "artifact_ghost_bright", "artifact_ghost_faint", "artifact_rays"]
config.bandDropout = 0.5
config.minBands = 1
config.skyAugmentProbability = 0.5
config.nativePixelScale = 0.2
config.pixelScaleRange = [0.17, 0.27]
config.nativeSeeing = 0.8
config.seeingRange = [0.6, 1.4]
config.artifactRate = 0.6
config.fullLength = 3000
config.warmupIterations = 100
config.fullLr = 3e-4
config.lrSteps = [2400, 2800]
config.evalPeriod = 500
config.seed = 12
