"""A support agent that stops reading: `python -m bench.stall SSH_PORT USER KEY HOST PORT`.

It logs in to the relay with asyncssh, opens one channel to the endpoint
HOST:PORT advertising a 2 GiB window, reads 1 MiB, then stops reading its socket
and prints `{"stalled": <payload bytes read>}`. It then holds the connection
until it is stopped (SIGTERM from the bench's `Procs`).
"""

from __future__ import annotations

import asyncio
import json
import sys

import asyncssh

from tests.rigs.stall import StopReadingChannel

WINDOW = 2**31
READ_FIRST = 1024 * 1024


async def main(ssh_port: int, user: str, key: str, host: str, port: int) -> None:
    conn = await asyncssh.connect(
        "127.0.0.1", ssh_port, username=user, client_keys=[key], known_hosts=None, agent_path=None
    )
    async with conn:
        session = StopReadingChannel(conn, READ_FIRST)
        await conn.create_connection(lambda: session, host, port, window=WINDOW)
        await asyncio.wait_for(session.stopped.wait(), 60)
        print(json.dumps({"stalled": session.received}), flush=True)
        await conn.wait_closed()


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit("usage: python -m bench.stall SSH_PORT USER KEY HOST PORT")
    a = sys.argv
    asyncio.run(main(int(a[1]), a[2], a[3], a[4], int(a[5])))
