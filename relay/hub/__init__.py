"""The relay's shared state, in parts with one job each.

`buckets` (one per paying agent), `tunnels` (the tunnel table), `stream` (the
record every TCP stream and UDP flow shares, and the dispatcher that carries out
quota.core.streams' decisions), `live` (live streams and usage totals),
`recorder` (the stream-log records), `activity` (owners going inactive and
their grace timers), `control` (the admin API's `RelayControl`), `billing`
(the quota agent's `QuotaHost`) and `hub` (the assembly the rest of the relay
holds). None of them imports the TCP, UDP, SSH or admin HTTP parts.
"""
