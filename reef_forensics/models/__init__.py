"""Models on disk: loading (safetensors and GGUF by default), extracting hidden
representations, making a fingerprint, and the derivatives used as controls."""
