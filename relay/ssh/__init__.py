"""The SSH front: agents log in and ask for forwards."""
