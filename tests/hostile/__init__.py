"""Hostile peers on loopback: each attack reproduced, a legitimate agent checked to keep working."""
