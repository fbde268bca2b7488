"""Grace: folders in, fresh semantic search out, wired by grace.yaml and run on Dagster."""
