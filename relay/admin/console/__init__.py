"""The operator view of a relay: HTML pages on the admin listener, behind the admin token."""
