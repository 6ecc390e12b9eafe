"""Model-packaging build system: Hugging Face diffusion model → cold-start-optimised RunPod artifact."""

__version__ = "0.1.0"
