"""Services as plain classes (services.py opens them from a manifest); bindings.py gives each a thin
Dagster ConfigurableResource, injected by name."""
