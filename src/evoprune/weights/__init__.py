"""Model weights on disk: loading, checking and writing safetensors checkpoints."""
