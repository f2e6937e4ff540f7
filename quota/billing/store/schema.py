"""The billing schema, once for SQLite and once for PostgreSQL: migration N means the same in both.

Invariants:
- Both lists have one entry per schema version, applied in order and once
  (SQLite counts in `PRAGMA user_version`, PostgreSQL in `schema_version`); a
  change of the schema is a new entry in both lists, never an edit of one.
- Tables, columns, keys, CHECKs and defaults are the same in both. Integers are
  64 bits in both (SQLite's INTEGER, PostgreSQL's BIGINT); flags are 0/1
  integers in both. Ledger rows are immutable in both: SQLite's triggers abort,
  PostgreSQL's PL/pgSQL trigger raises (and also refuses TRUNCATE).
- PostgreSQL spells out what SQLite has implicitly: `rowid` of `agent_keys`
  (the order keys were added) and the numbered `id` of `ledger` and `notices`.
"""

from __future__ import annotations

SQLITE: tuple[str, ...] = (
    """
    CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        balance INTEGER NOT NULL CHECK (balance >= 0),
        version INTEGER NOT NULL,
        frozen INTEGER NOT NULL DEFAULT 0,
        frozen_reason TEXT,
        low_notice_at INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        plan TEXT,
        active INTEGER NOT NULL DEFAULT 0,
        lapsed INTEGER NOT NULL DEFAULT 0,
        active_until INTEGER,
        auto_renew INTEGER NOT NULL DEFAULT 1,
        allow_metered INTEGER NOT NULL DEFAULT 0,
        bucket_bytes INTEGER NOT NULL DEFAULT 0 CHECK (bucket_bytes >= 0),
        package_bytes INTEGER NOT NULL DEFAULT 0 CHECK (package_bytes >= 0),
        metered_carry INTEGER NOT NULL DEFAULT 0,
        time_carry INTEGER NOT NULL DEFAULT 0,
        topup_package TEXT,
        topup_limit INTEGER NOT NULL DEFAULT 0,
        topup_spent INTEGER NOT NULL DEFAULT 0,
        topup_below INTEGER NOT NULL DEFAULT 0,
        topup_blocked INTEGER NOT NULL DEFAULT 0,
        topup_since INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        UNIQUE (account_id, name)
    );
    CREATE TABLE agent_keys (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents(id),
        public_key TEXT NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        agent_id TEXT,
        kind TEXT NOT NULL,
        amount INTEGER NOT NULL,
        balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
        traffic_bytes INTEGER NOT NULL,
        used_bytes INTEGER NOT NULL,
        idempotency_key TEXT NOT NULL,
        reason TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE INDEX ledger_account ON ledger (account_id, id);
    CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
    CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
        BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
    CREATE TABLE idempotency (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (scope, key)
    );
    CREATE TABLE payments (
        payment_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        amount INTEGER NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE TABLE deposit_intents (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        amount INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE usage_reports (
        relay_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (relay_id, seq)
    );
    CREATE TABLE notices (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    """,
    # 2: relay sync. A report number (relay_id, seq) was shared by the old
    # /v1/usage and /v1/sync (kind), so one number is never applied by both;
    # leases are one relay's cumulative share of one agent's traffic.
    """
    ALTER TABLE usage_reports ADD COLUMN kind TEXT NOT NULL DEFAULT 'usage';
    ALTER TABLE usage_reports ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
    CREATE TABLE leases (
        relay_id TEXT NOT NULL,
        agent_id TEXT NOT NULL REFERENCES agents(id),
        granted_total INTEGER NOT NULL DEFAULT 0 CHECK (granted_total >= 0),
        used_total INTEGER NOT NULL DEFAULT 0 CHECK (used_total >= 0),
        returned_total INTEGER NOT NULL DEFAULT 0 CHECK (returned_total >= 0),
        valid_until INTEGER NOT NULL,
        PRIMARY KEY (relay_id, agent_id)
    );
    CREATE INDEX leases_agent ON leases (agent_id, valid_until);
    """,
    # 3: per-tunnel usage, cumulative, so per-agent and per-tunnel totals can be read.
    """
    CREATE TABLE tunnel_usage (
        agent_id TEXT NOT NULL REFERENCES agents(id),
        tunnel_id TEXT NOT NULL,
        bytes INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0),
        tunnel_seconds INTEGER NOT NULL DEFAULT 0 CHECK (tunnel_seconds >= 0),
        first_at INTEGER NOT NULL,
        last_at INTEGER NOT NULL,
        PRIMARY KEY (agent_id, tunnel_id)
    );
    """,
    # 4: the web console: one-time sign-in links and sessions, both kept only as hashes.
    """
    CREATE TABLE console_links (
        token_hash TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER
    );
    CREATE TABLE console_sessions (
        token_hash TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
    """,
    # 5: notices are the webhook outbox: each keeps its event id, its delivery
    # state (none: no webhook configured when it was made; pending, delivered,
    # failed), its attempts, when the next one is due (wall-clock ms) and the
    # last error, so a notice survives a restart or a SIGKILL until delivered.
    """
    ALTER TABLE notices ADD COLUMN event_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE notices ADD COLUMN state TEXT NOT NULL DEFAULT 'none';
    ALTER TABLE notices ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE notices ADD COLUMN next_at INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE notices ADD COLUMN delivered_at INTEGER;
    ALTER TABLE notices ADD COLUMN last_error TEXT;
    CREATE INDEX notices_pending ON notices (state, id);
    CREATE INDEX notices_account ON notices (account_id, id);
    """,
    # 6: raw usage of every report kept for audit (append-only, like the ledger), and
    # each agent's open roll-up window of traffic draws (bytes, from, until), written
    # to the ledger as one entry when the window closes. Leases are indexed by agent
    # alone: every report moves valid_until, which then rewrites no index entry
    # (PostgreSQL also leaves room on the pages of the rows every report updates,
    # so those updates stay on their page: fillfactor, not in SQLite).
    """
    CREATE TABLE usage_log (
        relay_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        account_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        tunnel_id TEXT NOT NULL,
        bytes INTEGER NOT NULL CHECK (bytes >= 0),
        tunnel_seconds INTEGER NOT NULL CHECK (tunnel_seconds >= 0),
        at INTEGER NOT NULL
    );
    CREATE INDEX usage_log_account ON usage_log (account_id, at);
    -- usage before this migration: what the ledger charged, under tunnel id ''
    INSERT INTO usage_log (relay_id, seq, account_id, agent_id, tunnel_id, bytes,
        tunnel_seconds, at)
        SELECT 'ledger', id, account_id, agent_id, '', used_bytes, 0, at FROM ledger
        WHERE kind IN ('traffic', 'metered_traffic') AND used_bytes > 0
        AND agent_id IS NOT NULL;
    CREATE TRIGGER usage_log_no_update BEFORE UPDATE ON usage_log
        BEGIN SELECT RAISE(ABORT, 'usage records are immutable'); END;
    CREATE TRIGGER usage_log_no_delete BEFORE DELETE ON usage_log
        BEGIN SELECT RAISE(ABORT, 'usage records are immutable'); END;
    ALTER TABLE agents ADD COLUMN open_used INTEGER NOT NULL DEFAULT 0 CHECK (open_used >= 0);
    ALTER TABLE agents ADD COLUMN open_from INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN open_until INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX agents_open_until ON agents (open_until);
    DROP INDEX leases_agent;
    CREATE INDEX leases_agent ON leases (agent_id);
    """,
    # 7: per-tunnel totals are summed from the usage log when read, so a report writes
    # its usage once (the log), not twice. tunnel_usage keeps only what reports counted
    # before the log existed (migration 6): the log's rows, less those the log filled
    # from the ledger (relay 'ledger'), are taken out of it, and rows left empty go.
    """
    UPDATE tunnel_usage SET bytes = tunnel_usage.bytes - l.bytes,
        tunnel_seconds = tunnel_usage.tunnel_seconds - l.tunnel_seconds
        FROM (SELECT agent_id, tunnel_id, SUM(bytes) AS bytes,
            SUM(tunnel_seconds) AS tunnel_seconds FROM usage_log
            WHERE relay_id <> 'ledger' GROUP BY agent_id, tunnel_id) AS l
        WHERE tunnel_usage.agent_id = l.agent_id AND tunnel_usage.tunnel_id = l.tunnel_id;
    DELETE FROM tunnel_usage WHERE bytes = 0 AND tunnel_seconds = 0;
    """,
)


POSTGRESQL: tuple[str, ...] = (
    """
    CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        balance BIGINT NOT NULL CHECK (balance >= 0),
        version BIGINT NOT NULL,
        frozen INTEGER NOT NULL DEFAULT 0,
        frozen_reason TEXT,
        low_notice_at BIGINT,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        plan TEXT,
        active INTEGER NOT NULL DEFAULT 0,
        lapsed INTEGER NOT NULL DEFAULT 0,
        active_until BIGINT,
        auto_renew INTEGER NOT NULL DEFAULT 1,
        allow_metered INTEGER NOT NULL DEFAULT 0,
        bucket_bytes BIGINT NOT NULL DEFAULT 0 CHECK (bucket_bytes >= 0),
        package_bytes BIGINT NOT NULL DEFAULT 0 CHECK (package_bytes >= 0),
        metered_carry BIGINT NOT NULL DEFAULT 0,
        time_carry BIGINT NOT NULL DEFAULT 0,
        topup_package TEXT,
        topup_limit BIGINT NOT NULL DEFAULT 0,
        topup_spent BIGINT NOT NULL DEFAULT 0,
        topup_below BIGINT NOT NULL DEFAULT 0,
        topup_blocked INTEGER NOT NULL DEFAULT 0,
        topup_since BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        UNIQUE (account_id, name)
    );
    CREATE INDEX agents_account ON agents (account_id);
    CREATE TABLE agent_keys (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents(id),
        public_key TEXT NOT NULL,
        revoked_at BIGINT,
        rowid BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE TABLE ledger (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        agent_id TEXT,
        kind TEXT NOT NULL,
        amount BIGINT NOT NULL,
        balance_after BIGINT NOT NULL CHECK (balance_after >= 0),
        traffic_bytes BIGINT NOT NULL,
        used_bytes BIGINT NOT NULL,
        idempotency_key TEXT NOT NULL,
        reason TEXT NOT NULL,
        at BIGINT NOT NULL
    );
    CREATE INDEX ledger_account ON ledger (account_id, id);
    CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'ledger entries are immutable'; END;
    $$;
    CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
        FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
    CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
        FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
    CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
        FOR EACH STATEMENT EXECUTE FUNCTION ledger_immutable();
    CREATE TABLE idempotency (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status BIGINT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (scope, key)
    );
    CREATE TABLE payments (
        payment_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        amount BIGINT NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL,
        at BIGINT NOT NULL
    );
    CREATE TABLE deposit_intents (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        amount BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE usage_reports (
        relay_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        body TEXT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (relay_id, seq)
    );
    CREATE TABLE notices (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        account_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        at BIGINT NOT NULL
    );
    """,
    """
    ALTER TABLE usage_reports ADD COLUMN kind TEXT NOT NULL DEFAULT 'usage';
    ALTER TABLE usage_reports ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
    CREATE TABLE leases (
        relay_id TEXT NOT NULL,
        agent_id TEXT NOT NULL REFERENCES agents(id),
        granted_total BIGINT NOT NULL DEFAULT 0 CHECK (granted_total >= 0),
        used_total BIGINT NOT NULL DEFAULT 0 CHECK (used_total >= 0),
        returned_total BIGINT NOT NULL DEFAULT 0 CHECK (returned_total >= 0),
        valid_until BIGINT NOT NULL,
        PRIMARY KEY (relay_id, agent_id)
    );
    CREATE INDEX leases_agent ON leases (agent_id, valid_until);
    """,
    """
    CREATE TABLE tunnel_usage (
        agent_id TEXT NOT NULL REFERENCES agents(id),
        tunnel_id TEXT NOT NULL,
        bytes BIGINT NOT NULL DEFAULT 0 CHECK (bytes >= 0),
        tunnel_seconds BIGINT NOT NULL DEFAULT 0 CHECK (tunnel_seconds >= 0),
        first_at BIGINT NOT NULL,
        last_at BIGINT NOT NULL,
        PRIMARY KEY (agent_id, tunnel_id)
    );
    """,
    """
    CREATE TABLE console_links (
        token_hash TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
    );
    CREATE TABLE console_sessions (
        token_hash TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
    """,
    """
    ALTER TABLE notices ADD COLUMN event_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE notices ADD COLUMN state TEXT NOT NULL DEFAULT 'none';
    ALTER TABLE notices ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE notices ADD COLUMN next_at BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE notices ADD COLUMN delivered_at BIGINT;
    ALTER TABLE notices ADD COLUMN last_error TEXT;
    CREATE INDEX notices_pending ON notices (state, id);
    CREATE INDEX notices_account ON notices (account_id, id);
    """,
    """
    CREATE TABLE usage_log (
        relay_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        account_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        tunnel_id TEXT NOT NULL,
        bytes BIGINT NOT NULL CHECK (bytes >= 0),
        tunnel_seconds BIGINT NOT NULL CHECK (tunnel_seconds >= 0),
        at BIGINT NOT NULL
    );
    CREATE INDEX usage_log_account ON usage_log (account_id, at);
    -- usage before this migration: what the ledger charged, under tunnel id ''
    INSERT INTO usage_log (relay_id, seq, account_id, agent_id, tunnel_id, bytes,
        tunnel_seconds, at)
        SELECT 'ledger', id, account_id, agent_id, '', used_bytes, 0, at FROM ledger
        WHERE kind IN ('traffic', 'metered_traffic') AND used_bytes > 0
        AND agent_id IS NOT NULL;
    CREATE FUNCTION usage_log_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'usage records are immutable'; END;
    $$;
    CREATE TRIGGER usage_log_no_update BEFORE UPDATE ON usage_log
        FOR EACH ROW EXECUTE FUNCTION usage_log_immutable();
    CREATE TRIGGER usage_log_no_delete BEFORE DELETE ON usage_log
        FOR EACH ROW EXECUTE FUNCTION usage_log_immutable();
    CREATE TRIGGER usage_log_no_truncate BEFORE TRUNCATE ON usage_log
        FOR EACH STATEMENT EXECUTE FUNCTION usage_log_immutable();
    ALTER TABLE agents ADD COLUMN open_used BIGINT NOT NULL DEFAULT 0 CHECK (open_used >= 0);
    ALTER TABLE agents ADD COLUMN open_from BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN open_until BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX agents_open_until ON agents (open_until);
    DROP INDEX leases_agent;
    CREATE INDEX leases_agent ON leases (agent_id);
    ALTER TABLE agents SET (fillfactor = 70);
    ALTER TABLE leases SET (fillfactor = 70);
    ALTER TABLE tunnel_usage SET (fillfactor = 70);
    """,
    # 7: per-tunnel totals are summed from the usage log when read, so a report writes
    # its usage once (the log), not twice. tunnel_usage keeps only what reports counted
    # before the log existed (migration 6): the log's rows, less those the log filled
    # from the ledger (relay 'ledger'), are taken out of it, and rows left empty go.
    """
    UPDATE tunnel_usage SET bytes = tunnel_usage.bytes - l.bytes,
        tunnel_seconds = tunnel_usage.tunnel_seconds - l.tunnel_seconds
        FROM (SELECT agent_id, tunnel_id, SUM(bytes) AS bytes,
            SUM(tunnel_seconds) AS tunnel_seconds FROM usage_log
            WHERE relay_id <> 'ledger' GROUP BY agent_id, tunnel_id) AS l
        WHERE tunnel_usage.agent_id = l.agent_id AND tunnel_usage.tunnel_id = l.tunnel_id;
    DELETE FROM tunnel_usage WHERE bytes = 0 AND tunnel_seconds = 0;
    """,
)
