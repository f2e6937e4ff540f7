"""The admin API: the HTTP server in the relay, and the client the CLI uses.

`client` imports nothing of the server side, so tools can use it alone.
"""
