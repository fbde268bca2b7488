"""The bottom layer: the manifest schema and the names every other layer shares."""
