"""The stages in order over one `Run`: `ensure_<stage>(run)` decides skip or do; `package()` runs them."""
