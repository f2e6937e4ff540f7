"""The billing API matches its OpenAPI document: schemathesis, all checks, three token kinds.

A real billing server on 127.0.0.1 serves real ids (an account, an agent with a
key, a subscription); the schemathesis command line then runs its phases with
every check against the served document once per token kind (admin, account,
relay), with those ids as path parameters. Any server error, any answer (status,
header or body) outside the document, or any other check failing fails the test.

`QUOTARELAY_FUZZ_EXAMPLES` sets the examples per operation and
`QUOTARELAY_FUZZ_SECONDS` each run's time budget (schemathesis's `--max-time`);
`QUOTARELAY_FUZZ_CASES` is the fewest cases the three runs must have made.
`make test` runs a short pass (a few hundred cases); `make fuzz` at least 5,000.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from quota.billing.server import BillingServer
from quota.core.authfail import AuthFailures
from tests.billing.api import ADMIN, RELAY, Api

EXAMPLES = int(os.environ.get("QUOTARELAY_FUZZ_EXAMPLES", "3"))
MAX_TIME = int(os.environ.get("QUOTARELAY_FUZZ_SECONDS", "15"))  # per token kind
MIN_CASES = int(os.environ.get("QUOTARELAY_FUZZ_CASES", "150"))  # it ran, even on a busy host
ST = Path(sys.executable).with_name("st")


# A request the document allows may still be refused for what it names (422), what it
# costs (402) or the state it meets (409); never with 400, which means "breaks the document".
ACCEPTED = ["2xx", "401", "402", "403", "404", "409", "422", "429"]
# A request the document forbids is refused with 400, or 413 when it is too large to read.
REJECTED = ["400", "401", "403", "404", "405", "409", "413", "422", "429"]


def _config(token: str, ids: dict[str, str]) -> str:
    params = "\n".join(f'"path.{name}" = "{value}"' for name, value in ids.items())
    return (
        f'[headers]\nAuthorization = "Bearer {token}"\n\n'
        f"[parameters]\n{params}\n\n"
        f"[checks.positive_data_acceptance]\nexpected-statuses = {ACCEPTED}\n\n"
        f"[checks.negative_data_rejection]\nexpected-statuses = {REJECTED}\n"
    ).replace("'", '"')


async def _run(url: str, config: Path, report: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(ST),
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        # a WebSocket: OpenAPI cannot describe the upgrade (a plain GET is a 400 by design)
        "--exclude-operation-id",
        "relayEvents",
        "--max-examples",
        str(EXAMPLES),
        "--max-time",
        str(MAX_TIME),
        "--workers",
        "1",
        "--seed",
        "9",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=config.parent,  # its cache folder goes there
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), MAX_TIME + 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace")


async def test_schemathesis_finds_nothing_outside_the_document(
    api: Api, server: BillingServer, tmp_path: Path
) -> None:
    """No server error and no answer outside the OpenAPI document, for each token kind."""
    server.service.auth_failures = AuthFailures(limit=10**9)  # its auth probes are not an attack
    acc, token = await api.account()
    await api.deposit(acc, 10**9, "fuzz-funds")
    agent = await api.agent(acc, token)
    await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", token, {"plan": "pro"})
    intent = await api.ok("POST", f"/v1/accounts/{acc}/deposit-intents", token, {"amount": 9})
    review = {
        "account_id": acc,
        "payment_id": "fuzz-review",
        "amount": 1,
        "intent_id": intent["id"],
    }
    await api.ok("POST", "/v1/deposits", body=review)  # a notice: a real webhook event id
    (notice,) = (await api.ok("GET", f"/v1/accounts/{acc}/webhooks", token))["deliveries"]
    ids = {"account_id": acc, "agent_id": agent["id"], "key_id": agent["keys"][0]["id"]}
    ids["event_id"] = notice["id"]
    cases, failed = 0, []
    for kind, tok in (("admin", ADMIN), ("account", token), ("relay", RELAY)):
        config = tmp_path / f"{kind}.toml"
        config.write_text(_config(tok, ids))
        code, out = await _run(server.url, config, tmp_path / f"{kind}.ndjson")
        if code != 0:
            failed.append(f"schemathesis with the {kind} token:\n{out}")
        found = re.search(r"(\d+) generated", out)
        cases += int(found.group(1)) if found else 0
    print(f"schemathesis: {cases} cases")
    assert not failed, "\n".join(failed)
    assert cases >= MIN_CASES
