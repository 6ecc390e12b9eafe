"""Images onto RunPod endpoints (deploy), and what a cold start will cost in each mode (plan, cost)."""
