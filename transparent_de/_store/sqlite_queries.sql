-- Every statement the SQLite store runs, by name (transparent_de/_store/sqlite.py loads them).
-- The schema is in sqlite_schema.sql; docs/journal.md documents every column.

-- ------------------------------------------------------------------ ownership

-- name: fence
-- In every write transaction of a flow: matches no row (refusing the write) once another
-- engine took the flow over. A read, so a step's commit changes only its own journal page;
-- the heartbeat renews the lease (see renew).
SELECT 1 FROM flows WHERE flow_id = ? AND owner = ? AND fence = ?

-- name: flow_state
SELECT f.status, f.owner, f.lease_until, f.fence, e.class_name, e.method_name, e.fingerprint, f.failures,
       e.parameters
FROM flows f JOIN execution_log e ON e.flow_id = f.flow_id AND e.step = 0
WHERE f.flow_id = ?

-- name: insert_flow
INSERT INTO flows (flow_id, module, qualname, method_name, instance, status, owner, lease_until, fence,
                   created, updated)
VALUES (?, ?, ?, ?, ?, 'PENDING', ?, ?, 1, ?, ?)
ON CONFLICT (flow_id) DO NOTHING

-- name: insert_flow_step
INSERT INTO execution_log (flow_id, step, timestamp, class_name, method_name, status, parameters, kind,
                           fingerprint, updated)
VALUES (?, 0, ?, ?, ?, 'PENDING', ?, 'flow', ?, ?)

-- name: take_over
-- Compare-and-set on the fencing token: only the claimer that saw the current token wins.
UPDATE flows SET owner = ?, lease_until = ?, fence = fence + 1, wake_at = NULL, waiting_for = NULL,
                 status = 'PENDING', updated = ?
WHERE flow_id = ? AND fence = ?

-- name: count_attempt
UPDATE execution_log SET attempts = attempts + 1, updated = ? WHERE flow_id = ? AND step = 0

-- name: renew
-- The heartbeat of a running flow. A renewal always changes lease_until (even if this
-- process's clock stands still or went back): others see renewals as changes.
UPDATE flows SET lease_until = max(coalesce(lease_until, 0) + 1, ?) WHERE flow_id = ? AND owner = ?

-- name: cancel_flow
UPDATE flows SET status = 'CANCELLED', owner = NULL, fence = fence + 1, updated = ?
WHERE flow_id = ? AND status IN ('PENDING', 'WAITING_FOR_SIGNAL')

-- name: cancel_step
UPDATE execution_log SET status = 'CANCELLED', updated = ? WHERE flow_id = ? AND step = 0

-- ------------------------------------------------------------------ a flow's own writes (ops)

-- name: intent
-- Before a step runs. A row that exists already only counts the attempt (the seed's upsert).
INSERT INTO execution_log (flow_id, step, timestamp, class_name, method_name, delay, status, parameters,
                           kind, fingerprint, site, updated, lineage)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (flow_id, step) DO UPDATE SET attempts = attempts + 1, updated = excluded.updated

-- name: retry
UPDATE execution_log SET attempts = attempts + 1, status = coalesce(?, status), updated = ?
WHERE flow_id = ? AND step = ?

-- name: complete
UPDATE execution_log SET status = 'COMPLETE', return_value = ?, updated = ? WHERE flow_id = ? AND step = ?

-- name: step_failed
UPDATE execution_log SET status = 'FAILED', error = ?, error_text = ?, updated = ?
WHERE flow_id = ? AND step = ?

-- name: reopen
UPDATE execution_log SET status = 'PENDING', updated = ? WHERE flow_id = ? AND step = ? AND status = 'FAILED'

-- name: captured
INSERT INTO execution_log (flow_id, step, timestamp, class_name, method_name, status, parameters,
                           return_value, kind, fingerprint, updated, lineage)
VALUES (?, ?, ?, ?, ?, 'COMPLETE', NULL, ?, 'capture', ?, ?, ?)

-- name: consume_signal
UPDATE signals SET consumed_step = ? WHERE seq = ? AND consumed_step IS NULL

-- name: signal_arguments
UPDATE execution_log SET status = 'PENDING', parameters = ?, updated = ? WHERE flow_id = ? AND step = ?

-- name: flow_result
UPDATE execution_log SET status = 'COMPLETE', return_value = ?, updated = ? WHERE flow_id = ? AND step = 0

-- name: flow_completed
UPDATE flows SET status = 'COMPLETE', owner = NULL, wake_at = NULL, waiting_for = NULL, updated = ?
WHERE flow_id = ?

-- name: flow_error
UPDATE execution_log SET status = 'FAILED', error = ?, updated = ? WHERE flow_id = ? AND step = 0

-- name: flow_failed
UPDATE flows SET status = 'FAILED', owner = NULL, wake_at = NULL, waiting_for = NULL, failures = ?, updated = ?
WHERE flow_id = ?

-- name: backoff
-- A failed run: the flow stays resumable, but recovery waits until wake_at.
UPDATE flows SET owner = NULL, wake_at = ?, waiting_for = NULL, status = 'PENDING', failures = ?, updated = ?
WHERE flow_id = ?

-- name: rearm_flow
-- `retry`: a FAILED flow becomes resumable again, its failure count cleared.
UPDATE flows SET status = 'PENDING', owner = NULL, wake_at = NULL, waiting_for = NULL, failures = 0,
                 fence = fence + 1, updated = ?
WHERE flow_id = ? AND status = 'FAILED'

-- name: rearm_step
UPDATE execution_log SET status = 'PENDING', updated = ? WHERE flow_id = ? AND step = 0

-- name: parked
UPDATE flows SET owner = NULL, wake_at = ?, waiting_for = ?, status = ?, updated = ? WHERE flow_id = ?

-- name: waiting
UPDATE flows SET status = CASE WHEN ? IS NULL THEN 'PENDING' ELSE 'WAITING_FOR_SIGNAL' END, waiting_for = ?,
                 updated = ?
WHERE flow_id = ?

-- name: release
UPDATE flows SET owner = NULL, updated = ? WHERE flow_id = ?

-- ------------------------------------------------------------------ signals

-- name: insert_signal
INSERT INTO signals (flow_id, step_name, payload, sent) VALUES (?, ?, x'', ?)

-- name: seal_signal
UPDATE signals SET payload = ? WHERE seq = ?

-- name: next_signal
SELECT seq, payload FROM signals WHERE flow_id = ? AND step_name = ? AND consumed_step IS NULL
ORDER BY seq LIMIT 1

-- name: signalled
-- Of the given parked flows (a JSON array), those whose awaited step has a signal, and those
-- that no longer wait at all.
SELECT DISTINCT f.flow_id FROM flows f
JOIN signals s ON s.flow_id = f.flow_id AND s.step_name = f.waiting_for AND s.consumed_step IS NULL
WHERE f.flow_id IN (SELECT value FROM json_each(?))
UNION
SELECT flow_id FROM flows
WHERE flow_id IN (SELECT value FROM json_each(?))
  AND (status NOT IN ('PENDING', 'WAITING_FOR_SIGNAL') OR waiting_for IS NULL)

-- ------------------------------------------------------------------ reads

-- name: load_steps
SELECT step, class_name, method_name, status, attempts, parameters, return_value, fingerprint, error,
       timestamp, delay, kind, lineage
FROM execution_log WHERE flow_id = ? AND step > 0

-- name: status
SELECT status FROM flows WHERE flow_id = ?

-- name: identity
SELECT f.module, f.qualname, f.method_name, e.class_name, f.instance, e.parameters
FROM flows f JOIN execution_log e ON e.flow_id = f.flow_id AND e.step = 0
WHERE f.flow_id = ?

-- name: outcome
SELECT status, return_value, error FROM execution_log WHERE flow_id = ? AND step = 0

-- name: flow_class
SELECT module || '.' || qualname FROM flows WHERE flow_id = ?

-- name: wait_state
SELECT status, wake_at, waiting_for FROM flows WHERE flow_id = ?

-- name: unfinished
-- With the length of the sleep or wait each parked flow is in (its latest unfinished timed row).
SELECT f.flow_id, f.owner, f.lease_until, f.fence, f.wake_at, f.waiting_for,
       (SELECT e.delay FROM execution_log e
        WHERE e.flow_id = f.flow_id AND e.step > 0 AND e.delay IS NOT NULL
          AND e.status IN ('PENDING', 'WAITING_FOR_SIGNAL')
        ORDER BY e.step DESC LIMIT 1)
FROM flows f
WHERE f.status IN ('PENDING', 'WAITING_FOR_SIGNAL') ORDER BY f.created

-- name: flow_info
SELECT f.flow_id, f.module || '.' || f.qualname, f.method_name, f.status, f.owner, f.lease_until,
       f.wake_at, f.waiting_for, f.created, f.updated,
       (SELECT count(*) FROM execution_log e WHERE e.flow_id = f.flow_id AND e.step > 0)
FROM flows f WHERE f.flow_id = ?

-- name: unfinished_of
-- How many unfinished flows this entry has (a fresh id while some exist: recover()?).
SELECT count(*) FROM flows
WHERE module = ? AND qualname = ? AND method_name = ? AND status IN ('PENDING', 'WAITING_FOR_SIGNAL')

-- name: all_values
-- Every value blob, for doctor (read and checked, never unpickled).
SELECT flow_id, step, parameters, return_value, error FROM execution_log ORDER BY flow_id, step

-- name: flows
-- For `list`: every flow, or those with one status (? is NULL for all).
SELECT f.flow_id, f.module || '.' || f.qualname, f.method_name, f.status, f.owner, f.lease_until,
       f.wake_at, f.waiting_for, f.created, f.updated,
       (SELECT count(*) FROM execution_log e WHERE e.flow_id = f.flow_id AND e.step > 0)
FROM flows f WHERE ? IS NULL OR f.status = ?
ORDER BY f.created, f.flow_id

-- name: steps
SELECT step, class_name, method_name, status, attempts, timestamp, delay, kind, parameters, return_value,
       error_text, site, updated
FROM execution_log WHERE flow_id = ? ORDER BY step

-- name: modules
-- Modules of flow classes: of one flow (first ? not NULL), of unfinished flows (second ? = 1), or all.
SELECT DISTINCT module FROM flows
WHERE (? IS NULL OR flow_id = ?) AND (? = 0 OR status IN ('PENDING', 'WAITING_FOR_SIGNAL'))

-- name: status_counts
SELECT status, count(*) FROM flows GROUP BY status

-- name: instances
SELECT instance FROM flows
