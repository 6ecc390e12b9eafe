"""Locked source files → an artifact: target-precision safetensors in the diffusers layout, streamed,
verified, written atomically with its manifest last."""
