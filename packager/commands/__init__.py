"""CLI commands, one module per command (`packager convert` is commands/convert.py); cli.py registers them."""
