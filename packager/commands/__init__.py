"""CLI commands, one module per area; each exposes COMMANDS for packager.cli to register."""
