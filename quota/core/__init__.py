"""The quota domain, pure: no I/O, no clock, no logging; only the standard library.

Everything about counting, granting, thresholds, states and money is decided here.
The relay, the quota agent and the billing API carry out what this package decides.
"""
