"""The HTTP API: the Starlette app, its request parsing, the client and the server process."""
