-- Runs and everything they produce. The database is the source of truth for run state.
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL,
    preset       TEXT    NOT NULL,
    dataset      TEXT    NOT NULL,
    config       TEXT    NOT NULL,               -- RunConfig as JSON
    state        TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'interrupted')),
    device       TEXT    NOT NULL DEFAULT 'auto',
    error        TEXT,
    created_at   TEXT    NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    -- Progress, updated by the recorder so lists need no scan of metrics.
    step         INTEGER NOT NULL DEFAULT 0,
    epoch        INTEGER NOT NULL DEFAULT 0,
    total_steps  INTEGER NOT NULL DEFAULT 0,
    last_loss    REAL,
    images_per_sec REAL,
    best_knn     REAL,
    last_knn     REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_state ON runs(state);

CREATE TABLE metrics (
    run_id  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step    INTEGER NOT NULL,
    epoch   INTEGER NOT NULL,
    name    TEXT    NOT NULL,
    value   REAL    NOT NULL,
    PRIMARY KEY (run_id, name, step)
) WITHOUT ROWID;

CREATE TABLE evaluations (
    run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch    INTEGER NOT NULL,
    step     INTEGER NOT NULL,
    knn_top1 REAL    NOT NULL,
    features TEXT    NOT NULL,
    created_at TEXT  NOT NULL,
    PRIMARY KEY (run_id, epoch)
);

CREATE TABLE checkpoints (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL CHECK (kind IN ('full', 'encoder')),
    path       TEXT    NOT NULL,                 -- relative to the data directory
    epoch      INTEGER NOT NULL,
    step       INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256     TEXT    NOT NULL,
    created_at TEXT    NOT NULL
);
CREATE INDEX checkpoints_run ON checkpoints(run_id);

-- Every event a client can receive over SSE, in order; the id is the SSE event id.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL,                 -- metrics | state | evaluation | checkpoint | log
    data       TEXT    NOT NULL,                 -- JSON
    created_at TEXT    NOT NULL
);
CREATE INDEX events_run ON events(run_id, id);
