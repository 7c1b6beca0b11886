-- Every statement the PostgreSQL store runs, by name (transparent_de/_store/postgres.py loads
-- them). Each mirrors the statement of the same name in sqlite_queries.sql; where one SQLite
-- transaction ran two statements whose second depended on the first's row count, one statement
-- with a data-modifying CTE does both (one round trip). The schema is postgres_schema.sql.

-- ------------------------------------------------------------------ the schema itself

-- name: meta
SELECT application_id, schema_version FROM journal_meta

-- name: has_meta
SELECT to_regclass(%s) IS NOT NULL

-- name: tables_in_schema
SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = %s

-- name: set_meta
INSERT INTO journal_meta (application_id, schema_version) VALUES (%s, %s)

-- name: update_meta
UPDATE journal_meta SET schema_version = %s

-- name: lock_schema
-- Processes opening a fresh database together create (or migrate) the schema once.
SELECT pg_advisory_xact_lock(hashtext('transparent_de:' || %s))

-- name: configure
-- Each pooled connection, once: our schema first, the durability setting, the lock wait, a cap
-- on a transaction left open by a stopped process (its row locks would block the takeover of
-- its flows), and read-only for stores opened read-only.
SELECT set_config('search_path', %s, false), set_config('synchronous_commit', %s, false),
       set_config('lock_timeout', %s, false), set_config('idle_in_transaction_session_timeout', %s, false),
       set_config('default_transaction_read_only', %s, false), set_config('application_name', %s, false)

-- name: settings
SELECT name, setting FROM pg_catalog.pg_settings
WHERE name IN ('server_version', 'synchronous_commit', 'default_transaction_isolation', 'max_connections',
               'fsync', 'TimeZone', 'lock_timeout', 'default_transaction_read_only')

-- name: integrity
-- Flows without their step 0 row (the two are created in one transaction: never expected).
SELECT 'flow ' || f.flow_id || ' has no step 0' FROM flows f
WHERE NOT EXISTS (SELECT 1 FROM execution_log e WHERE e.flow_id = f.flow_id AND e.step = 0)
LIMIT 20

-- ------------------------------------------------------------------ ownership

-- name: fence
-- In every write transaction of a flow (see tde_fence in the schema).
SELECT tde_fence(%s, %s, %s, %s, %s)

-- name: flow_state
SELECT f.status, f.owner, f.lease_until, f.fence, e.class_name, e.method_name, e.fingerprint, f.failures,
       e.parameters
FROM flows f JOIN execution_log e ON e.flow_id = f.flow_id AND e.step = 0
WHERE f.flow_id = %s

-- name: create_flow
-- The flow and its step 0, or nothing (row count 0) if the id exists.
WITH f AS (
    INSERT INTO flows (flow_id, module, qualname, method_name, instance, status, owner, lease_until, fence,
                       created, updated)
    VALUES (%s, %s, %s, %s, %s, 'PENDING', %s, %s, 1, %s, %s)
    ON CONFLICT (flow_id) DO NOTHING
    RETURNING flow_id
)
INSERT INTO execution_log (flow_id, step, timestamp, class_name, method_name, status, parameters, kind,
                           fingerprint, updated)
SELECT flow_id, 0, %s, %s, %s, 'PENDING', %s, 'flow', %s, %s FROM f

-- name: take_over
-- Compare-and-set on the fencing token (only the claimer that saw the current token wins), and
-- step 0's attempt counted: row count 1 if the claim won.
WITH t AS (
    UPDATE flows SET owner = %s, lease_until = %s, fence = fence + 1, wake_at = NULL, waiting_for = NULL,
                     status = 'PENDING', updated = %s
    WHERE flow_id = %s AND fence = %s
    RETURNING flow_id
)
UPDATE execution_log SET attempts = attempts + 1, updated = %s
WHERE step = 0 AND flow_id IN (SELECT flow_id FROM t)

-- name: renew
-- The heartbeat of this owner's running flows (always a change of lease_until, as in tde_fence).
UPDATE flows SET lease_until = GREATEST(COALESCE(lease_until, 0) + 1, %s)
WHERE owner = %s AND flow_id = ANY(%s::text[])

-- name: cancel
-- Returns the status the flow had (no row: no such flow); an unfinished flow becomes CANCELLED.
WITH before AS (SELECT status FROM flows WHERE flow_id = %s),
     c AS (
         UPDATE flows SET status = 'CANCELLED', owner = NULL, fence = fence + 1, updated = %s
         WHERE flow_id = %s AND status IN ('PENDING', 'WAITING_FOR_SIGNAL')
         RETURNING flow_id
     ),
     s AS (
         UPDATE execution_log SET status = 'CANCELLED', updated = %s
         WHERE step = 0 AND flow_id IN (SELECT flow_id FROM c)
     )
SELECT status FROM before

-- name: rearm
-- `retry`: a FAILED flow becomes resumable again, its failure count cleared. Returns the status
-- the flow had.
WITH before AS (SELECT status FROM flows WHERE flow_id = %s),
     r AS (
         UPDATE flows SET status = 'PENDING', owner = NULL, wake_at = NULL, waiting_for = NULL, failures = 0,
                          fence = fence + 1, updated = %s
         WHERE flow_id = %s AND status = 'FAILED'
         RETURNING flow_id
     ),
     s AS (
         UPDATE execution_log SET status = 'PENDING', updated = %s
         WHERE step = 0 AND flow_id IN (SELECT flow_id FROM r)
     )
SELECT status FROM before

-- ------------------------------------------------------------------ a flow's own writes (ops)

-- name: intent
-- Before a step runs. A row that exists already only counts the attempt (the seed's upsert).
INSERT INTO execution_log (flow_id, step, timestamp, class_name, method_name, delay, status, parameters,
                           kind, fingerprint, site, updated, lineage)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (flow_id, step) DO UPDATE SET attempts = execution_log.attempts + 1, updated = excluded.updated

-- name: retry
UPDATE execution_log SET attempts = attempts + 1, status = coalesce(%s, status), updated = %s
WHERE flow_id = %s AND step = %s

-- name: complete
UPDATE execution_log SET status = 'COMPLETE', return_value = %s, updated = %s WHERE flow_id = %s AND step = %s

-- name: step_failed
UPDATE execution_log SET status = 'FAILED', error = %s, error_text = %s, updated = %s
WHERE flow_id = %s AND step = %s

-- name: reopen
UPDATE execution_log SET status = 'PENDING', updated = %s WHERE flow_id = %s AND step = %s AND status = 'FAILED'

-- name: captured
INSERT INTO execution_log (flow_id, step, timestamp, class_name, method_name, status, parameters,
                           return_value, kind, fingerprint, updated, lineage)
VALUES (%s, %s, %s, %s, %s, 'COMPLETE', NULL, %s, 'capture', %s, %s, %s)

-- name: consume_signal
-- Aborts the transaction (TD002) if the signal was consumed already (see tde_consume).
SELECT tde_consume(%s, %s)

-- name: signal_arguments
UPDATE execution_log SET status = 'PENDING', parameters = %s, updated = %s WHERE flow_id = %s AND step = %s

-- name: flow_result
UPDATE execution_log SET status = 'COMPLETE', return_value = %s, updated = %s WHERE flow_id = %s AND step = 0

-- name: flow_completed
UPDATE flows SET status = 'COMPLETE', owner = NULL, wake_at = NULL, waiting_for = NULL, updated = %s
WHERE flow_id = %s

-- name: flow_error
UPDATE execution_log SET status = 'FAILED', error = %s, updated = %s WHERE flow_id = %s AND step = 0

-- name: flow_failed
UPDATE flows SET status = 'FAILED', owner = NULL, wake_at = NULL, waiting_for = NULL, failures = %s, updated = %s
WHERE flow_id = %s

-- name: backoff
-- A failed run: the flow stays resumable, but recovery waits until wake_at.
UPDATE flows SET owner = NULL, wake_at = %s, waiting_for = NULL, status = 'PENDING', failures = %s, updated = %s
WHERE flow_id = %s

-- name: parked
UPDATE flows SET owner = NULL, wake_at = %s, waiting_for = %s, status = %s, updated = %s WHERE flow_id = %s

-- name: waiting
UPDATE flows SET status = CASE WHEN %s::text IS NULL THEN 'PENDING' ELSE 'WAITING_FOR_SIGNAL' END,
                 waiting_for = %s, updated = %s
WHERE flow_id = %s

-- name: release
UPDATE flows SET owner = NULL, updated = %s WHERE flow_id = %s

-- ------------------------------------------------------------------ signals

-- name: next_seq
-- A signal's row number is allocated first: its payload is signed for it before the insert.
SELECT nextval(pg_get_serial_sequence('signals', 'seq'))

-- name: insert_signal
INSERT INTO signals (seq, flow_id, step_name, payload, sent) VALUES (%s, %s, %s, %s, %s)

-- name: notify
-- A wake-up hint on the journal's channel (postgres_wake.py), in the transaction of a stored
-- signal or a park: the server delivers it on COMMIT, and never for a rolled-back transaction.
SELECT pg_notify(%s, %s)

-- name: next_signal
SELECT seq, payload FROM signals WHERE flow_id = %s AND step_name = %s AND consumed_step IS NULL
ORDER BY seq LIMIT 1

-- name: signalled
-- Of the given parked flows, those whose awaited step has a signal, and those that no longer
-- wait at all.
SELECT DISTINCT f.flow_id FROM flows f
JOIN signals s ON s.flow_id = f.flow_id AND s.step_name = f.waiting_for AND s.consumed_step IS NULL
WHERE f.flow_id = ANY(%s::text[])
UNION
SELECT flow_id FROM flows
WHERE flow_id = ANY(%s::text[]) AND (status NOT IN ('PENDING', 'WAITING_FOR_SIGNAL') OR waiting_for IS NULL)

-- ------------------------------------------------------------------ reads

-- name: load_steps
SELECT step, class_name, method_name, status, attempts, parameters, return_value, fingerprint, error,
       timestamp, delay, kind, lineage
FROM execution_log WHERE flow_id = %s AND step > 0

-- name: status
SELECT status FROM flows WHERE flow_id = %s

-- name: identity
SELECT f.module, f.qualname, f.method_name, e.class_name, f.instance, e.parameters
FROM flows f JOIN execution_log e ON e.flow_id = f.flow_id AND e.step = 0
WHERE f.flow_id = %s

-- name: outcome
SELECT status, return_value, error FROM execution_log WHERE flow_id = %s AND step = 0

-- name: flow_class
SELECT module || '.' || qualname FROM flows WHERE flow_id = %s

-- name: wait_state
SELECT status, wake_at, waiting_for FROM flows WHERE flow_id = %s

-- name: unfinished
-- With the length of the sleep or wait each parked flow is in (its latest unfinished timed row).
SELECT f.flow_id, f.owner, f.lease_until, f.fence, f.wake_at, f.waiting_for,
       (SELECT e.delay FROM execution_log e
        WHERE e.flow_id = f.flow_id AND e.step > 0 AND e.delay IS NOT NULL
          AND e.status IN ('PENDING', 'WAITING_FOR_SIGNAL')
        ORDER BY e.step DESC LIMIT 1)
FROM flows f
WHERE f.status IN ('PENDING', 'WAITING_FOR_SIGNAL') ORDER BY f.created, f.flow_id

-- name: flow_info
SELECT f.flow_id, f.module || '.' || f.qualname, f.method_name, f.status, f.owner, f.lease_until,
       f.wake_at, f.waiting_for, f.created, f.updated,
       (SELECT count(*) FROM execution_log e WHERE e.flow_id = f.flow_id AND e.step > 0)
FROM flows f WHERE f.flow_id = %s

-- name: unfinished_of
SELECT count(*) FROM flows
WHERE module = %s AND qualname = %s AND method_name = %s AND status IN ('PENDING', 'WAITING_FOR_SIGNAL')

-- name: all_values
-- Every value blob, for doctor (read and checked, never unpickled).
SELECT flow_id, step, parameters, return_value, error FROM execution_log ORDER BY flow_id, step

-- name: flows
-- For `list`: every flow, or those with one status (NULL for all).
SELECT f.flow_id, f.module || '.' || f.qualname, f.method_name, f.status, f.owner, f.lease_until,
       f.wake_at, f.waiting_for, f.created, f.updated,
       (SELECT count(*) FROM execution_log e WHERE e.flow_id = f.flow_id AND e.step > 0)
FROM flows f WHERE %s::text IS NULL OR f.status = %s
ORDER BY f.created, f.flow_id

-- name: steps
SELECT step, class_name, method_name, status, attempts, timestamp, delay, kind, parameters, return_value,
       error_text, site, updated
FROM execution_log WHERE flow_id = %s ORDER BY step

-- name: modules
SELECT DISTINCT module FROM flows
WHERE (%s::text IS NULL OR flow_id = %s) AND (%s = 0 OR status IN ('PENDING', 'WAITING_FOR_SIGNAL'))

-- name: status_counts
SELECT status, count(*) FROM flows GROUP BY status

-- name: instances
SELECT instance FROM flows
