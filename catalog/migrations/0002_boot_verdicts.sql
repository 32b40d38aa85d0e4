-- The newest verify-boot verdict of each point. The repository keeps every
-- run (verify/<point-id>/…, serial log included); the catalog keeps what a
-- listing shows, and forgets it with the point.
CREATE TABLE boot_verdicts (
  point_id TEXT PRIMARY KEY REFERENCES points(id) ON DELETE CASCADE,
  verdict TEXT NOT NULL,
  reason TEXT NOT NULL DEFAULT '',
  host TEXT NOT NULL DEFAULT '',
  checked_at BIGINT NOT NULL,
  boot_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
  seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
  repo_key TEXT NOT NULL DEFAULT ''
);
