"""The relay's shared state: the hub, its tunnel table, and the host billing syncs with."""
