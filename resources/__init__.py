"""Services as plain classes, one subpackage per sub-domain; wiring/services.py opens them from a
manifest and wiring/dagster_resources.py gives each a thin Dagster ConfigurableResource, injected by name."""
