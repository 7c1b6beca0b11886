-- Migrations of the SQLite journal, one block per schema version (PRAGMA user_version).
-- Each block brings a journal of the version before it up to its version, in the same
-- transaction that sets user_version; sqlite_schema.sql is always the latest schema whole.

-- migrate: 2
-- flows.failures: consecutive failed runs, for the backoff of recovery and its cap (a flow
-- that keeps failing ends FAILED: the dead letter).
ALTER TABLE flows ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;

-- migrate: 3
-- execution_log.lineage: an async flow's call identity (task lineage key and call index, e.g.
-- '0.1:3'), which its step number is not (docs/async.md). NULL for rows of sync flows.
ALTER TABLE execution_log ADD COLUMN lineage TEXT;
