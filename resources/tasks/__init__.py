"""Routed tasks: the inbox, the built-in handlers, the project's handlers, routing reports."""
