-- What the server needs beyond the first schema: the run's shape for progress and ETA without
-- parsing its config, and indexes for the queries the API makes.
ALTER TABLE runs ADD COLUMN epochs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN batch_size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN steps_per_epoch INTEGER NOT NULL DEFAULT 0;
-- How many times the run was started (1 for a run that never resumed).
ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;

CREATE INDEX runs_created ON runs(created_at, id);
CREATE INDEX checkpoints_run_kind ON checkpoints(run_id, kind, step);
