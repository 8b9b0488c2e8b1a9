"""Checking a findings record against the fingerprints it names (`verify --evidence`): every
number recomputed."""
