-- Sweeps: a base config and a grid of values, each grid point an ordinary run. A sweep's state
-- is not stored: it is read from its members' states.
CREATE TABLE sweeps (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    recipe     TEXT,                             -- a built-in recipe's name, or NULL
    spec       TEXT    NOT NULL,                 -- the SweepSpec as asked, JSON
    fields     TEXT    NOT NULL,                 -- the varied fields in order, JSON array
    skipped    TEXT    NOT NULL DEFAULT '[]',    -- grid points a recipe left out, with why
    created_at TEXT    NOT NULL
);

CREATE TABLE sweep_members (
    sweep_id INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    run_id   INTEGER NOT NULL UNIQUE REFERENCES runs(id) ON DELETE CASCADE,
    vals     TEXT    NOT NULL,                   -- the member's values, JSON [[field, value], …]
    PRIMARY KEY (sweep_id, position)
);
