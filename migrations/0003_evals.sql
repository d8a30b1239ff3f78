-- Evaluations of trained encoders as jobs: a linear probe or a weighted kNN of one encoder file
-- on one labelled dataset, queued on the same devices as training. The state names are the
-- runs' (RunState).
CREATE TABLE evals (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    method        TEXT    NOT NULL CHECK (method IN ('linear', 'knn')),
    -- The linear probe's protocol (moco | v3 | fast); NULL for kNN.
    protocol      TEXT,
    -- The run whose checkpoint is evaluated (NULL for a file placed in or uploaded to the data
    -- directory); its evaluations go with it when it is deleted.
    run_id        INTEGER REFERENCES runs(id) ON DELETE CASCADE,
    checkpoint_id INTEGER REFERENCES checkpoints(id) ON DELETE SET NULL,
    encoder       TEXT    NOT NULL,              -- the encoder file, relative to the data directory
    encoder_sha256 TEXT   NOT NULL,
    encoder_arch  TEXT    NOT NULL,
    encoder_epoch INTEGER NOT NULL,
    dataset       TEXT    NOT NULL,              -- the dataset's label
    config        TEXT    NOT NULL,              -- ProbeConfig or KnnConfig as JSON
    state         TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'interrupted')),
    device        TEXT    NOT NULL,
    error         TEXT,
    created_at    TEXT    NOT NULL,
    started_at    TEXT,
    finished_at   TEXT,
    -- Progress, kept current while it runs.
    epoch         INTEGER NOT NULL DEFAULT 0,
    epochs        INTEGER NOT NULL DEFAULT 0,
    step          INTEGER NOT NULL DEFAULT 0,
    total_steps   INTEGER NOT NULL DEFAULT 0,
    steps_per_sec REAL,
    last_loss     REAL,
    -- Held-out accuracy in percent after the last epoch (kNN: top-1 only).
    top1          REAL,
    top5          REAL,
    best_top1     REAL,
    result        TEXT,                          -- the final result as JSON
    attempts      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX evals_state ON evals(state, id);
CREATE INDEX evals_run ON evals(run_id, id);

-- A probe's curve: one row per trained epoch (held-out accuracy on the epochs it was scored).
CREATE TABLE eval_epochs (
    eval_id  INTEGER NOT NULL REFERENCES evals(id) ON DELETE CASCADE,
    epoch    INTEGER NOT NULL,
    step     INTEGER NOT NULL,
    lr       REAL    NOT NULL,
    loss     REAL    NOT NULL,
    top1     REAL,
    top5     REAL,
    PRIMARY KEY (eval_id, epoch)
) WITHOUT ROWID;
