"""The reference central billing API: store, HTTP app, maintenance and notices.

It imports only `quota.core` and `quota.contract` of the project; relays meet it
through the wire messages of `quota.contract.wire`.
"""
