-- The transparent_de PostgreSQL journal, schema version 2 (journal_meta.schema_version), in a
-- schema of its own ("transparent_de" by default; every connection's search_path is set to it).
-- The tables and columns are those of the SQLite journal (sqlite_schema.sql), with the same
-- meanings; docs/journal.md documents every column, docs/postgres.md what differs.
-- Times are integer milliseconds since the epoch, written by the client (never now()).
-- Created, and later migrated, in one transaction under pg_advisory_xact_lock.

-- Which application the schema belongs to, and its version (SQLite: application_id, user_version).
CREATE TABLE journal_meta (
    application_id BIGINT  NOT NULL,  -- 0x54444531 ("TDE1"), as the SQLite journal's
    schema_version INTEGER NOT NULL   -- this file's version; older ones are migrated
);

-- One row per step invocation, as in the seed (Persistasaurus). Step 0 is the flow itself.
CREATE TABLE execution_log (
    flow_id      TEXT    NOT NULL,  -- the flow's id (caller-chosen or a fresh uuid4 hex)
    step         INTEGER NOT NULL,  -- 0 = the flow call; 1, 2, ... = steps, captured values, timers, in call order
    timestamp    BIGINT  NOT NULL,  -- ms since the epoch of the FIRST attempt (never updated on retries)
    class_name   TEXT    NOT NULL,  -- module.Qualname declaring the method; 'time', 'random', ... for captured calls
    method_name  TEXT    NOT NULL,  -- the step's method name ('time', 'sleep', 'uuid4', ... for captured calls)
    delay        BIGINT,            -- durable sleep: ms to wait from `timestamp`; NULL for other rows
    status       TEXT    NOT NULL CHECK (status IN ('PENDING', 'WAITING_FOR_SIGNAL', 'COMPLETE', 'FAILED', 'CANCELLED')),
    attempts     INTEGER NOT NULL DEFAULT 1,  -- times the step was started (retries and re-runs add one)
    parameters   BYTEA,             -- framed (args, kwargs); step 0: the flow's arguments
    return_value BYTEA,             -- framed result when COMPLETE
    kind         TEXT    NOT NULL DEFAULT 'step' CHECK (kind IN ('flow', 'step', 'capture', 'sleep', 'signal')),
    fingerprint  TEXT,              -- canonical digest of the arguments (the non-determinism check)
    error        BYTEA,             -- framed exception: the outcome when FAILED, the last failure while PENDING
    error_text   TEXT,              -- the formatted traceback of `error`, for people
    site         TEXT,              -- call site 'qualname:line' (diagnostics only, not checked on replay)
    updated      BIGINT  NOT NULL,  -- ms since the epoch of the last change
    lineage      TEXT,              -- async flows: the call's slot 'task key:n' (e.g. '0.1:3'), its identity; NULL in sync flows
    PRIMARY KEY (flow_id, step)
);

-- One row per flow: who runs it (lease), and what a parked flow waits for.
CREATE TABLE flows (
    flow_id     TEXT    NOT NULL PRIMARY KEY,
    module      TEXT    NOT NULL,   -- module of the flow class (recover() imports it)
    qualname    TEXT    NOT NULL,   -- qualified name of the flow class
    method_name TEXT    NOT NULL,   -- the entry method
    instance    BYTEA,              -- framed flow object as it was at start (recover() rebuilds it)
    status      TEXT    NOT NULL CHECK (status IN ('PENDING', 'WAITING_FOR_SIGNAL', 'COMPLETE', 'FAILED', 'CANCELLED')),
    owner       TEXT,               -- 'host:pid:token' of the engine holding the lease; NULL = nobody
    lease_until BIGINT,             -- ms, as the owner's clock wrote it; every renewal changes it (docs/postgres.md)
    fence       BIGINT  NOT NULL DEFAULT 0,  -- fencing token, bumped at every claim; every write checks it
    wake_at     BIGINT,             -- ms; a parked flow is due at this time (durable sleep)
    waiting_for TEXT,               -- step name a parked flow waits a signal for
    failures    INTEGER NOT NULL DEFAULT 0,  -- consecutive failed runs (recovery backs off; at the cap: FAILED)
    created     BIGINT  NOT NULL,   -- ms
    updated     BIGINT  NOT NULL    -- ms
);
CREATE INDEX flows_by_status ON flows (status, wake_at);
CREATE INDEX flows_by_created ON flows (created, flow_id);

-- Signals are stored durably: one sent before the flow waits, or while no process runs it, is kept.
CREATE TABLE signals (
    seq           BIGSERIAL PRIMARY KEY,
    flow_id       TEXT    NOT NULL,
    step_name     TEXT    NOT NULL,  -- the waited-for step the arguments are for
    payload       BYTEA   NOT NULL,  -- framed (args, kwargs), signed for this row
    sent          BIGINT  NOT NULL,  -- ms
    consumed_step INTEGER            -- the step number that took it; NULL while pending
);
CREATE INDEX signals_pending ON signals (flow_id, step_name, consumed_step);

-- The fence of every write transaction of a flow: renews the lease, and aborts the whole
-- transaction (SQLSTATE TD001) once another engine took the flow over. Raising on the server
-- is what lets a commit go in one round trip (BEGIN, fence, the writes, COMMIT pipelined): an
-- error makes the server skip the rest. A renewal always changes lease_until.
CREATE FUNCTION tde_fence(p_flow TEXT, p_owner TEXT, p_fence BIGINT, p_lease BIGINT, p_now BIGINT)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE flows SET lease_until = GREATEST(COALESCE(lease_until, 0) + 1, p_lease), updated = p_now
    WHERE flow_id = p_flow AND owner = p_owner AND fence = p_fence;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'TD001', MESSAGE = 'lease of flow ' || p_flow || ' lost';
    END IF;
END
$$;

-- A wait takes signal p_seq for step p_step, or the transaction aborts (SQLSTATE TD002): the
-- signal was consumed already.
CREATE FUNCTION tde_consume(p_seq BIGINT, p_step INTEGER)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE signals SET consumed_step = p_step WHERE seq = p_seq AND consumed_step IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'TD002', MESSAGE = 'signal ' || p_seq || ' was consumed already';
    END IF;
END
$$;
