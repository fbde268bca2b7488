"""Running Grace under Dagster: the instance grace.yaml renders, the forking run launcher, the alembic patch,
and stopping a process group of everything a started process started."""
