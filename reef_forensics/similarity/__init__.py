"""Pure similarity mathematics (numpy and scipy only): CKA, layer alignment, the null
calibration and its tail probabilities, and the matching of hidden units."""
