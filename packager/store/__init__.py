"""Where artifacts are kept and moved: local folder or S3 stores, and RunPod network volumes (seed)."""
