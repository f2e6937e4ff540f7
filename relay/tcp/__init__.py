"""TCP streams: metered pumps (legs) and the tunnels that open streams."""
