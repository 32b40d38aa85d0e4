-- Lifeboat catalog, version 1. Runs on SQLite and PostgreSQL alike:
-- TEXT/INTEGER/BIGINT/DOUBLE PRECISION only, times as Unix nanoseconds
-- (NULL = never), booleans as INTEGER 0/1, JSON as TEXT. {{id}} is the
-- dialect's auto-increment primary key. A statement ends with ';' at the end
-- of a line.

CREATE TABLE clusters (
  id {{id}},
  name TEXT NOT NULL UNIQUE,
  ha_manager TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL
);

-- Nodes are hosts running an agent. Names are unique across the server.
CREATE TABLE nodes (
  id {{id}},
  cluster_id BIGINT REFERENCES clusters(id) ON DELETE RESTRICT,
  name TEXT NOT NULL UNIQUE,
  hostname TEXT NOT NULL DEFAULT '',
  cert_fingerprint TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL DEFAULT 'enrolled',
  version TEXT NOT NULL DEFAULT '',
  enrolled_at BIGINT NOT NULL,
  last_heartbeat BIGINT
);
CREATE UNIQUE INDEX nodes_fingerprint ON nodes (cert_fingerprint) WHERE cert_fingerprint <> '';
CREATE INDEX nodes_cluster ON nodes (cluster_id);

-- Only the SHA-256 of a token is kept; used_at makes it single-use.
CREATE TABLE enrollment_tokens (
  id {{id}},
  token_hash TEXT NOT NULL UNIQUE,
  cluster_id BIGINT REFERENCES clusters(id) ON DELETE CASCADE,
  note TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  used_at BIGINT,
  node_id BIGINT REFERENCES nodes(id) ON DELETE SET NULL
);

CREATE TABLE shared_volumes (
  id {{id}},
  cluster_id BIGINT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
  path TEXT NOT NULL,
  volume_id TEXT NOT NULL,
  UNIQUE (cluster_id, path),
  UNIQUE (cluster_id, volume_id)
);

-- VMs, keyed by the hypervisor's UUID so a VM keeps its row when it moves.
-- volume_id is the shared volume's ID ('' for local storage).
CREATE TABLE vms (
  id {{id}},
  uuid TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  cluster_id BIGINT REFERENCES clusters(id) ON DELETE SET NULL,
  owner_node_id BIGINT REFERENCES nodes(id) ON DELETE SET NULL,
  volume_id TEXT NOT NULL DEFAULT '',
  path TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL DEFAULT 'unknown',
  last_seen BIGINT NOT NULL
);
CREATE INDEX vms_name ON vms (name);
CREATE INDEX vms_owner ON vms (owner_node_id);
CREATE INDEX vms_volume ON vms (volume_id);

-- full_times: comma-separated HH:MM in time_zone; incremental_seconds 0 =
-- no incrementals.
CREATE TABLE protection_groups (
  id {{id}},
  name TEXT NOT NULL UNIQUE,
  full_times TEXT NOT NULL DEFAULT '',
  time_zone TEXT NOT NULL DEFAULT 'UTC',
  incremental_seconds BIGINT NOT NULL DEFAULT 0,
  retention_days INTEGER NOT NULL DEFAULT 0,
  retention_count INTEGER NOT NULL DEFAULT 0,
  offline_fallback INTEGER NOT NULL DEFAULT 1,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);

-- A VM name belongs to at most one group.
CREATE TABLE group_members (
  group_id BIGINT NOT NULL REFERENCES protection_groups(id) ON DELETE CASCADE,
  vm_name TEXT NOT NULL UNIQUE,
  PRIMARY KEY (group_id, vm_name)
);

-- target_node_id: where the job must run (a restore's target host); NULL
-- means the owner of vm_id at claim time, or the server when vm_id is NULL
-- too. node_id: who claimed it.
CREATE TABLE jobs (
  id {{id}},
  kind TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'queued',
  vm_id BIGINT REFERENCES vms(id) ON DELETE SET NULL,
  vm_name TEXT NOT NULL DEFAULT '',
  target_node_id BIGINT REFERENCES nodes(id) ON DELETE SET NULL,
  node_id BIGINT REFERENCES nodes(id) ON DELETE SET NULL,
  volume_id TEXT NOT NULL DEFAULT '',
  group_id BIGINT REFERENCES protection_groups(id) ON DELETE SET NULL,
  params TEXT NOT NULL DEFAULT '',
  progress DOUBLE PRECISION NOT NULL DEFAULT 0,
  bytes BIGINT NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  not_before BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  started_at BIGINT,
  finished_at BIGINT,
  updated_at BIGINT NOT NULL,
  result TEXT NOT NULL DEFAULT '',
  error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_state_target ON jobs (state, target_node_id, id);
CREATE INDEX jobs_state_node ON jobs (state, node_id);
CREATE INDEX jobs_state_volume ON jobs (state, volume_id);
CREATE INDEX jobs_state_kind ON jobs (state, kind);
CREATE INDEX jobs_vm ON jobs (vm_id, kind, id);
CREATE INDEX jobs_finished ON jobs (finished_at);

CREATE TABLE job_logs (
  id {{id}},
  job_id BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  logged_at BIGINT NOT NULL,
  level TEXT NOT NULL DEFAULT 'info',
  message TEXT NOT NULL
);
CREATE INDEX job_logs_job ON job_logs (job_id, id);

-- Rows whose update serializes claims that share a limit (a node, a kind,
-- a shared volume) on both databases.
CREATE TABLE claim_locks (
  name TEXT PRIMARY KEY,
  n BIGINT NOT NULL DEFAULT 0
);

-- Recovery points, one row per manifest in the repository (id = point ID).
-- name is the protected object (a VM's name).
CREATE TABLE points (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  kind TEXT NOT NULL,
  taken_at BIGINT NOT NULL,
  host TEXT NOT NULL DEFAULT '',
  consistency TEXT NOT NULL DEFAULT '',
  previous TEXT NOT NULL DEFAULT '',
  size BIGINT NOT NULL DEFAULT 0,
  stored BIGINT NOT NULL DEFAULT 0,
  group_name TEXT NOT NULL DEFAULT '',
  files TEXT NOT NULL DEFAULT '[]',
  notes TEXT NOT NULL DEFAULT '[]',
  recorded_at BIGINT NOT NULL
);
CREATE INDEX points_name_time ON points (name, taken_at);
CREATE INDEX points_time ON points (taken_at);

-- One open (unacknowledged) alert per kind and subject: raising it again
-- bumps occurrences and last_seen.
CREATE TABLE alerts (
  id {{id}},
  kind TEXT NOT NULL,
  severity TEXT NOT NULL,
  subject TEXT NOT NULL,
  message TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  last_seen BIGINT NOT NULL,
  occurrences BIGINT NOT NULL DEFAULT 1,
  acknowledged_at BIGINT,
  acknowledged_by TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX alerts_open ON alerts (kind, subject) WHERE acknowledged_at IS NULL;
CREATE INDEX alerts_created ON alerts (created_at);

-- Cartridges: label_id is the ID written in the cartridge's label; slot is
-- NULL when the cartridge is not in a slot.
CREATE TABLE tape_cartridges (
  id {{id}},
  library TEXT NOT NULL DEFAULT '',
  barcode TEXT NOT NULL,
  slot INTEGER,
  label_id TEXT NOT NULL UNIQUE,
  state TEXT NOT NULL DEFAULT 'available',
  capacity BIGINT NOT NULL DEFAULT 0,
  used BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  written_at BIGINT,
  UNIQUE (library, barcode)
);

-- Which part of which point is where: a copy of a point (copy_id) is a
-- sequence of segments, possibly across cartridges. No foreign key to
-- points: a tape copy outlives a point pruned from the repository.
CREATE TABLE tape_segments (
  copy_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  point_id TEXT NOT NULL,
  cartridge_id BIGINT NOT NULL REFERENCES tape_cartridges(id) ON DELETE CASCADE,
  file_number BIGINT NOT NULL,
  byte_offset BIGINT NOT NULL DEFAULT 0,
  length BIGINT NOT NULL,
  final INTEGER NOT NULL DEFAULT 0,
  written_at BIGINT NOT NULL,
  PRIMARY KEY (copy_id, seq)
);
CREATE INDEX tape_segments_point ON tape_segments (point_id);
CREATE INDEX tape_segments_cartridge ON tape_segments (cartridge_id, file_number);
