"""The comparison of two fingerprints and the verdict: CKA per layer, the calibrated tests,
the neuron-matching test and the decision rule."""
