"""Data keys under the KEK: the vault, rotation and the overdue rule."""
