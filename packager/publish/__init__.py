"""Publish: the artifact as a tagged commit of a hub repo, which RunPod's cached models serve from."""
