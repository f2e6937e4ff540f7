"""Rigs: the real parts that tests and the bench (`python -m bench`) start on 127.0.0.1.

One set serves both: agent keys and agents files, relay and billing processes
started from the console script, stock OpenSSH clients and their options, TCP
services and exchange functions. A part that runs as a process has an async
driver, for tests on an event loop, and a blocking one (through `Procs`), for the
threaded bench; both write the same config files and run the same commands.

Invariants:
- Everything listens on 127.0.0.1; every process a rig starts is stopped by whoever
  started the rig (a fixture, or the `Procs` of a bench section).
- Conditions are polled with a deadline (`poll`, `wait_for`), never slept on.
- The product is reached through its command line and a few imports only
  (`relay.admin.client`, `relay.config.HostPort`), so moving a product module
  changes one import line here.
- Nothing here is installed: the wheel ships `quota`, `relay` and `tools` only.
"""
