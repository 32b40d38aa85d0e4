package catalog

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// ---- boot verdicts ---------------------------------------------------------

// BootVerdict is the newest verify-boot outcome of a point: its verdict
// (booted-agent-ok, booted-no-agent, did-not-boot, check-failed) and where
// the whole record (serial log included) is in the repository.
type BootVerdict struct {
	PointID     string    `json:"point"`
	Verdict     string    `json:"verdict"`
	Reason      string    `json:"reason,omitempty"`
	Host        string    `json:"host,omitempty"`
	CheckedAt   time.Time `json:"checked_at"`
	BootSeconds float64   `json:"boot_seconds,omitempty"`
	Seconds     float64   `json:"seconds"`
	// Key is the verdict's object in the repository (verify/<point>/…).
	Key string `json:"key,omitempty"`
}

// RecordBootVerdict stores a point's verdict unless a newer one is
// recorded already (verdicts may arrive out of order from several agents).
// The point must be listed (ErrNotFound otherwise); the verdict goes with
// it when the point is deleted.
func (c *Catalog) RecordBootVerdict(ctx context.Context, v BootVerdict) error {
	if v.PointID == "" || v.Verdict == "" || v.CheckedAt.IsZero() {
		return fmt.Errorf("%w: a boot verdict needs a point, a verdict and a time", ErrInvalid)
	}
	_, err := c.exec(ctx, `INSERT INTO boot_verdicts (point_id, verdict, reason, host, checked_at, boot_seconds, seconds, repo_key)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (point_id) DO UPDATE SET verdict = excluded.verdict, reason = excluded.reason, host = excluded.host,
			checked_at = excluded.checked_at, boot_seconds = excluded.boot_seconds, seconds = excluded.seconds,
			repo_key = excluded.repo_key
		WHERE excluded.checked_at >= boot_verdicts.checked_at`,
		v.PointID, v.Verdict, v.Reason, v.Host, v.CheckedAt.UnixNano(), v.BootSeconds, v.Seconds, v.Key)
	return wrap(err, "record boot verdict of %s", v.PointID)
}

// GetBootVerdict returns a point's newest verdict, or ErrNotFound when it
// was never verified.
func (c *Catalog) GetBootVerdict(ctx context.Context, pointID string) (BootVerdict, error) {
	var v BootVerdict
	var at sql.NullInt64
	err := c.queryRow(ctx, `SELECT point_id, verdict, reason, host, checked_at, boot_seconds, seconds, repo_key
		FROM boot_verdicts WHERE point_id = ?`, pointID).
		Scan(&v.PointID, &v.Verdict, &v.Reason, &v.Host, &at, &v.BootSeconds, &v.Seconds, &v.Key)
	v.CheckedAt = nt(at)
	return v, wrap(err, "get boot verdict of %s", pointID)
}
