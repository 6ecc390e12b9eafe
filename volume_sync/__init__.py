"""Copies artifacts from the store onto a RunPod network volume, verifies and prunes them there.

Runs where the volume is mounted (a pod, or a worker at start) as `python -m volume_sync ...`, inside
slim worker images: it imports only the standard library, boto3 and `artifact_format`.
"""
