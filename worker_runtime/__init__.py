"""The RunPod worker that serves one packaged artifact (`python -m worker_runtime`).

This package ships inside worker images, so it imports nothing from the build side (`packager/`)
and keeps its heavy imports (torch, diffusers, runpod) in `handler.py`, where their cost is timed.
"""
