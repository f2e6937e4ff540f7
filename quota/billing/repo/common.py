"""What every repository module shares: the row type.

Lists of ids are read in one statement whatever their length (`Tx.in_ids`:
one bound parameter), so a report naming any number of agents is never
refused by the database for binding too many parameters.
"""

from __future__ import annotations

from quota.billing.store import Row

__all__ = ["Row"]
