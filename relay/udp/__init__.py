"""UDP tunnels: registration, flows, framed owner and support channels, public ports."""
