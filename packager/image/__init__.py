"""Artifacts into images: the Dockerfile and build context (render), the engine build and the push."""
