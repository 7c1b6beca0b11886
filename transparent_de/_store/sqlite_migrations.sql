-- Migrations of the SQLite journal, one block per schema version (PRAGMA user_version).
-- Each block brings a journal of the version before it up to its version, in the same
-- transaction that sets user_version; sqlite_schema.sql is always the latest schema whole.

-- migrate: 2
-- flows.failures: consecutive failed runs, for the backoff of recovery and its cap (a flow
-- that keeps failing ends FAILED: the dead letter).
ALTER TABLE flows ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
