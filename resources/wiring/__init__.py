"""The services a manifest wires: plain openers for the CLI and API, thin Dagster resources by name."""
