-- A protection group may have each new point of its members verify-booted
-- (a verify-boot job on the node that took the point, queued when the
-- backup is recorded). Old groups keep their behaviour: off.
ALTER TABLE protection_groups ADD COLUMN verify_boot INTEGER NOT NULL DEFAULT 0;
