"""The files the product reads and writes: fingerprints, probe sets, the findings record's
field types, the safetensors and GGUF readers, and the names it gives things."""
