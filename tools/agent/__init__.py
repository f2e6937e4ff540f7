"""`quotarelay agent`: the project's own SSH agent, for UDP tunnels (and TCP ones).

`config` parses settings and tunnel specs, `udp` turns datagrams into frames on
SSH channels and back, `client` runs sessions and reconnects.
"""
