-- The transparent_de SQLite journal, schema version 3 (PRAGMA user_version; PRAGMA
-- application_id = 0x54444531, "TDE1"). Every column is documented in docs/journal.md.
-- Readable by any SQLite tool; written only by transparent_de.
-- One row per step invocation, as in the seed (Persistasaurus). Step 0 is the flow itself.
CREATE TABLE IF NOT EXISTS execution_log (
    flow_id      TEXT    NOT NULL,  -- the flow's id (caller-chosen or a fresh uuid4 hex)
    step         INTEGER NOT NULL,  -- 0 = the flow call; 1, 2, ... = steps, captured values, timers, in call order
    timestamp    INTEGER NOT NULL,  -- ms since the epoch of the FIRST attempt (never updated on retries)
    class_name   TEXT    NOT NULL,  -- module.Qualname declaring the method; 'time', 'random', ... for captured calls
    method_name  TEXT    NOT NULL,  -- the step's method name ('time', 'sleep', 'uuid4', ... for captured calls)
    delay        INTEGER,           -- durable sleep: ms to wait from `timestamp`; NULL for other rows
    status       TEXT    NOT NULL CHECK (status IN ('PENDING', 'WAITING_FOR_SIGNAL', 'COMPLETE', 'FAILED', 'CANCELLED')),
    attempts     INTEGER NOT NULL DEFAULT 1,  -- times the step was started (retries and re-runs add one)
    parameters   BLOB,              -- framed (args, kwargs); step 0: the flow's arguments
    return_value BLOB,              -- framed result when COMPLETE
    kind         TEXT    NOT NULL DEFAULT 'step' CHECK (kind IN ('flow', 'step', 'capture', 'sleep', 'signal')),
    fingerprint  TEXT,              -- canonical digest of the arguments (the non-determinism check)
    error        BLOB,              -- framed exception: the outcome when FAILED, the last failure while PENDING
    error_text   TEXT,              -- the formatted traceback of `error`, for people
    site         TEXT,              -- call site 'qualname:line' (diagnostics only, not checked on replay)
    updated      INTEGER NOT NULL,  -- ms since the epoch of the last change
    lineage      TEXT,              -- async flows: the call's slot 'task key:n' (e.g. '0.1:3'), its identity; NULL in sync flows
    PRIMARY KEY (flow_id, step)
) WITHOUT ROWID;

-- One row per flow: who runs it (lease), and what a parked flow waits for.
CREATE TABLE IF NOT EXISTS flows (
    flow_id     TEXT    NOT NULL PRIMARY KEY,
    module      TEXT    NOT NULL,   -- module of the flow class (recover() imports it)
    qualname    TEXT    NOT NULL,   -- qualified name of the flow class
    method_name TEXT    NOT NULL,   -- the entry method
    instance    BLOB,               -- framed flow object as it was at start (recover() rebuilds it)
    status      TEXT    NOT NULL CHECK (status IN ('PENDING', 'WAITING_FOR_SIGNAL', 'COMPLETE', 'FAILED', 'CANCELLED')),
    owner       TEXT,               -- 'host:pid:token' of the engine holding the lease; NULL = nobody
    lease_until INTEGER,            -- ms; after it (or once the owner pid is dead) others may take over
    fence       INTEGER NOT NULL DEFAULT 0,  -- fencing token, bumped at every claim; every write checks it
    wake_at     INTEGER,            -- ms; a parked flow is due at this time (durable sleep)
    waiting_for TEXT,               -- step name a parked flow waits a signal for
    failures    INTEGER NOT NULL DEFAULT 0,  -- consecutive failed runs (recovery backs off; at the cap: FAILED)
    created     INTEGER NOT NULL,   -- ms
    updated     INTEGER NOT NULL    -- ms
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS flows_by_status ON flows (status, wake_at);

-- Signals are stored durably: one sent before the flow waits, or while no process runs it, is kept.
CREATE TABLE IF NOT EXISTS signals (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    flow_id       TEXT    NOT NULL,
    step_name     TEXT    NOT NULL,  -- the waited-for step the arguments are for
    payload       BLOB    NOT NULL,  -- framed (args, kwargs)
    sent          INTEGER NOT NULL,  -- ms
    consumed_step INTEGER            -- the step number that took it; NULL while pending
);
CREATE INDEX IF NOT EXISTS signals_pending ON signals (flow_id, step_name, consumed_step);
