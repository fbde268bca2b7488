"""The `grace` command: one module per group of subcommands."""
