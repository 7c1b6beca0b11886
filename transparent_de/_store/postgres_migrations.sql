-- Migrations of the PostgreSQL journal, one block per schema version (journal_meta.schema_version).
-- Each block ("-- migrate: N") brings a schema of version N-1 up to N, in the transaction (under
-- pg_advisory_xact_lock) that sets schema_version; postgres_schema.sql is always the latest
-- schema whole. Version 1 is the first.

-- migrate: 2
-- execution_log.lineage: an async flow's call identity (task lineage key and call index, e.g.
-- '0.1:3'), which its step number is not (docs/async.md). NULL for rows of sync flows.
ALTER TABLE execution_log ADD COLUMN lineage TEXT;
