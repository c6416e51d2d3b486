# The footprint rule of the simulation's truth tables (sim.scene): the model's inverse-variance weighted
# detection image above 1 sigma of its background noise.  With exact models (build_sim_repo(...,
# truth_models=True)) the labels then reproduce the truth footprints.
config.thresholdMode = "background_sigma"
config.sigmaThreshold = 1.0
config.detectionWeighting = "inverse_variance"
