"""Weights → target-precision safetensors in the diffusers layout (owned by the convert work)."""

# Bumped whenever the converter's output bytes can change for the same input: it is hashed into the
# lock's fingerprint, so a new converter invalidates old locks as surely as a new source does.
CONVERTER_VERSION = "1"
