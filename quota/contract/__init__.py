"""The typed contract: wire messages and config files, described once with msgspec.

`quota.core` stays stdlib-only; this package is where the schema library lives.
Both sides of the wire (the quota agent, the billing API) and every config
loader import from here, never from each other.
"""
