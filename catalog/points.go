package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"lifeboat/repo"
)

// ---- points ----------------------------------------------------------------

// Point is a recovery point as the catalog lists it: the manifest's summary
// and its files. The repository stays the truth; RebuildPoints re-lists it.
type Point struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Kind        string    `json:"kind"`
	Time        time.Time `json:"time"`
	Host        string    `json:"host,omitempty"`
	Consistency string    `json:"consistency"`
	Previous    string    `json:"previous,omitempty"`
	// Size sums the files' source sizes; Stored the new bytes the backup
	// stored.
	Size   int64 `json:"size"`
	Stored int64 `json:"stored"`
	// Group is the protection group whose schedule made the point ("" for
	// a manual or adopted one).
	Group string `json:"group,omitempty"`
	// BootVerdict is the newest verify-boot verdict of the point
	// (booted-agent-ok, booted-no-agent, did-not-boot, check-failed; ""
	// when never verified); GetBootVerdict has the rest.
	BootVerdict string      `json:"boot_verdict,omitempty"`
	Files       []repo.File `json:"files,omitempty"`
	Notes       []string    `json:"notes,omitempty"`
	Recorded    time.Time   `json:"recorded"`
}

// PointFromRepo summarizes a manifest.
func PointFromRepo(p *repo.Point, group string) Point {
	out := Point{
		ID: p.ID, Name: p.Name, Kind: p.Kind, Time: p.Time.UTC(), Host: p.Host,
		Consistency: p.Consistency, Previous: p.Previous, Group: group,
		Files: p.Files, Notes: p.Notes,
	}
	for _, f := range p.Files {
		out.Size += f.Size
		out.Stored += f.Stats.NewBytes
	}
	return out
}

// pointCols read from points (unaliased); the verdict comes by a
// subquery, so filters on the point's own columns stay unambiguous.
const pointCols = `id, name, kind, taken_at, host, consistency, previous, size, stored, group_name, recorded_at,
	COALESCE((SELECT v.verdict FROM boot_verdicts v WHERE v.point_id = points.id), '')`

func scanPoint(s interface{ Scan(...any) error }, withFiles bool) (Point, error) {
	var p Point
	var taken, recorded sql.NullInt64
	args := []any{&p.ID, &p.Name, &p.Kind, &taken, &p.Host, &p.Consistency, &p.Previous, &p.Size, &p.Stored, &p.Group, &recorded, &p.BootVerdict}
	var files, notes string
	if withFiles {
		args = append(args, &files, &notes)
	}
	if err := s.Scan(args...); err != nil {
		return p, err
	}
	p.Time, p.Recorded = nt(taken), nt(recorded)
	if withFiles {
		if err := json.Unmarshal([]byte(files), &p.Files); err != nil {
			return p, fmt.Errorf("point %s: files: %w", p.ID, err)
		}
		if err := json.Unmarshal([]byte(notes), &p.Notes); err != nil {
			return p, fmt.Errorf("point %s: notes: %w", p.ID, err)
		}
	}
	return p, nil
}

// upsertPoint records a point; recording one again refreshes it but keeps
// a known group when the new record has none.
func (c *Catalog) upsertPoint(ctx context.Context, tx *Tx, p Point, now int64) error {
	if p.ID == "" || p.Name == "" || p.Time.IsZero() {
		return fmt.Errorf("%w: point needs an ID, a name and a time", ErrInvalid)
	}
	if p.Files == nil {
		p.Files = []repo.File{}
	}
	if p.Notes == nil {
		p.Notes = []string{}
	}
	files, err := json.Marshal(p.Files)
	if err != nil {
		return err
	}
	notes, err := json.Marshal(p.Notes)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO points (id, name, kind, taken_at, host, consistency, previous, size, stored,
		group_name, files, notes, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET name = excluded.name, kind = excluded.kind, taken_at = excluded.taken_at,
			host = excluded.host, consistency = excluded.consistency, previous = excluded.previous,
			size = excluded.size, stored = excluded.stored,
			group_name = CASE WHEN excluded.group_name <> '' THEN excluded.group_name ELSE points.group_name END,
			files = excluded.files, notes = excluded.notes`,
		p.ID, p.Name, p.Kind, p.Time.UnixNano(), p.Host, p.Consistency, p.Previous, p.Size, p.Stored,
		p.Group, string(files), string(notes), now)
	return err
}

// RecordPoint lists a point the repository now holds.
func (c *Catalog) RecordPoint(ctx context.Context, p Point) error {
	err := c.tx(ctx, func(tx *Tx) error { return c.upsertPoint(ctx, tx, p, c.now().UnixNano()) })
	return wrap(err, "record point %s", p.ID)
}

// GetPoint reads a point with its files.
func (c *Catalog) GetPoint(ctx context.Context, id string) (Point, error) {
	p, err := scanPoint(c.queryRow(ctx, `SELECT `+pointCols+`, files, notes FROM points WHERE id = ?`, id), true)
	return p, wrap(err, "get point %s", id)
}

// PointFilter narrows ListPoints; zero fields match everything.
type PointFilter struct {
	Name  string
	Kind  string
	Group string
	// Since and Until bound the point's time: Since <= t < Until.
	Since, Until time.Time
	// Limit caps the answer (0: no cap); Oldest orders oldest first
	// instead of newest first.
	Limit  int
	Oldest bool
	// Files also reads each point's files and notes.
	Files bool
}

// ListPoints lists points, newest first unless f.Oldest.
func (c *Catalog) ListPoints(ctx context.Context, f PointFilter) ([]Point, error) {
	var where []string
	var args []any
	if f.Name != "" {
		where, args = append(where, "name = ?"), append(args, f.Name)
	}
	if f.Kind != "" {
		where, args = append(where, "kind = ?"), append(args, f.Kind)
	}
	if f.Group != "" {
		where, args = append(where, "group_name = ?"), append(args, f.Group)
	}
	if !f.Since.IsZero() {
		where, args = append(where, "taken_at >= ?"), append(args, f.Since.UnixNano())
	}
	if !f.Until.IsZero() {
		where, args = append(where, "taken_at < ?"), append(args, f.Until.UnixNano())
	}
	q := `SELECT ` + pointCols
	if f.Files {
		q += `, files, notes`
	}
	q += ` FROM points`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if f.Oldest {
		q += " ORDER BY taken_at, id"
	} else {
		q += " ORDER BY taken_at DESC, id DESC"
	}
	if f.Limit > 0 {
		q += " LIMIT " + strconv.Itoa(f.Limit)
	}
	rows, err := c.query(ctx, q, args...)
	if err != nil {
		return nil, wrap(err, "list points")
	}
	defer rows.Close()
	var out []Point
	for rows.Next() {
		p, err := scanPoint(rows, f.Files)
		if err != nil {
			return nil, wrap(err, "list points")
		}
		out = append(out, p)
	}
	return out, wrap(rows.Err(), "list points")
}

// LatestPoints maps each name with points to its newest point's time.
func (c *Catalog) LatestPoints(ctx context.Context) (map[string]time.Time, error) {
	rows, err := c.query(ctx, `SELECT name, MAX(taken_at) FROM points GROUP BY name`)
	if err != nil {
		return nil, wrap(err, "latest points")
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var name string
		var t sql.NullInt64
		if err := rows.Scan(&name, &t); err != nil {
			return nil, wrap(err, "latest points")
		}
		out[name] = nt(t)
	}
	return out, wrap(rows.Err(), "latest points")
}

// DeletePoint unlists a point (after prune removed its manifest).
func (c *Catalog) DeletePoint(ctx context.Context, id string) error {
	res, err := c.exec(ctx, `DELETE FROM points WHERE id = ?`, id)
	if err != nil {
		return wrap(err, "delete point %s", id)
	}
	if affected(res) == 0 {
		return fmt.Errorf("catalog: delete point %s: %w", id, ErrNotFound)
	}
	return nil
}

// RebuildPoints makes the points table list exactly the given manifests
// (`lifeboat server --adopt-repo`), in one transaction: new points are
// added, known ones refreshed (keeping their group), others removed. It
// returns how many it added and removed.
func (c *Catalog) RebuildPoints(ctx context.Context, points []repo.Point) (added, removed int, err error) {
	err = c.tx(ctx, func(tx *Tx) error {
		added, removed = 0, 0
		known := map[string]bool{}
		rows, err := tx.Query(ctx, `SELECT id FROM points`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			known[id] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		now := c.now().UnixNano()
		keep := map[string]bool{}
		for i := range points {
			p := PointFromRepo(&points[i], "")
			if err := c.upsertPoint(ctx, tx, p, now); err != nil {
				return fmt.Errorf("point %s: %w", p.ID, err)
			}
			if !known[p.ID] && !keep[p.ID] {
				added++
			}
			keep[p.ID] = true
		}
		for id := range known {
			if keep[id] {
				continue
			}
			if _, err := tx.Exec(ctx, `DELETE FROM points WHERE id = ?`, id); err != nil {
				return err
			}
			removed++
		}
		return nil
	})
	return added, removed, wrap(err, "rebuild points")
}

// ---- alerts ----------------------------------------------------------------

// Alert severities.
const (
	SeverityInfo     = "info"
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// Alert is something an operator should see: a failed job, a missed
// recovery-point objective.
type Alert struct {
	ID       int64  `json:"id"`
	Kind     string `json:"kind"`
	Severity string `json:"severity"`
	// Subject is what the alert is about ("vm:web1", "job:42").
	Subject     string    `json:"subject"`
	Message     string    `json:"message"`
	Created     time.Time `json:"created"`
	LastSeen    time.Time `json:"last_seen"`
	Occurrences int64     `json:"occurrences"`
	// Acknowledged is zero while the alert is open.
	Acknowledged   time.Time `json:"acknowledged,omitzero"`
	AcknowledgedBy string    `json:"acknowledged_by,omitempty"`
}

const alertCols = `id, kind, severity, subject, message, created_at, last_seen, occurrences, acknowledged_at, acknowledged_by`

func scanAlert(s interface{ Scan(...any) error }) (Alert, error) {
	var a Alert
	var created, seen, ack sql.NullInt64
	err := s.Scan(&a.ID, &a.Kind, &a.Severity, &a.Subject, &a.Message, &created, &seen, &a.Occurrences, &ack, &a.AcknowledgedBy)
	a.Created, a.LastSeen, a.Acknowledged = nt(created), nt(seen), nt(ack)
	return a, err
}

// RaiseAlert opens an alert, or, when one of the same kind and subject is
// still open, updates its severity and message and counts the occurrence.
func (c *Catalog) RaiseAlert(ctx context.Context, a Alert) (Alert, error) {
	if a.Kind == "" || a.Subject == "" {
		return a, fmt.Errorf("catalog: raise alert: %w: kind and subject are required", ErrInvalid)
	}
	switch a.Severity {
	case "":
		a.Severity = SeverityWarning
	case SeverityInfo, SeverityWarning, SeverityCritical:
	default:
		return a, fmt.Errorf("catalog: raise alert: %w: severity %q", ErrInvalid, a.Severity)
	}
	now := c.now().UnixNano()
	var out Alert
	err := c.retry(ctx, func() error {
		var err error
		out, err = scanAlert(c.w.QueryRowContext(ctx, c.rebind(`INSERT INTO alerts (kind, severity, subject, message, created_at, last_seen)
			VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (kind, subject) WHERE acknowledged_at IS NULL DO UPDATE SET
				severity = excluded.severity, message = excluded.message, last_seen = excluded.last_seen,
				occurrences = alerts.occurrences + 1
			RETURNING `+alertCols), a.Kind, a.Severity, a.Subject, a.Message, now, now))
		return err
	})
	return out, wrap(err, "raise %s alert on %s", a.Kind, a.Subject)
}

// AlertFilter narrows ListAlerts.
type AlertFilter struct {
	// Open keeps unacknowledged alerts only.
	Open    bool
	Kind    string
	Subject string
	Limit   int // default 100
}

// ListAlerts lists alerts, newest first.
func (c *Catalog) ListAlerts(ctx context.Context, f AlertFilter) ([]Alert, error) {
	var where []string
	var args []any
	if f.Open {
		where = append(where, "acknowledged_at IS NULL")
	}
	if f.Kind != "" {
		where, args = append(where, "kind = ?"), append(args, f.Kind)
	}
	if f.Subject != "" {
		where, args = append(where, "subject = ?"), append(args, f.Subject)
	}
	q := `SELECT ` + alertCols + ` FROM alerts`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if f.Limit <= 0 {
		f.Limit = 100
	}
	q += " ORDER BY id DESC LIMIT " + strconv.Itoa(f.Limit)
	rows, err := c.query(ctx, q, args...)
	if err != nil {
		return nil, wrap(err, "list alerts")
	}
	defer rows.Close()
	var out []Alert
	for rows.Next() {
		a, err := scanAlert(rows)
		if err != nil {
			return nil, wrap(err, "list alerts")
		}
		out = append(out, a)
	}
	return out, wrap(rows.Err(), "list alerts")
}

// AcknowledgeAlert closes an open alert; one already acknowledged is
// ErrConflict.
func (c *Catalog) AcknowledgeAlert(ctx context.Context, id int64, by string) error {
	res, err := c.exec(ctx, `UPDATE alerts SET acknowledged_at = ?, acknowledged_by = ? WHERE id = ? AND acknowledged_at IS NULL`,
		c.now().UnixNano(), by, id)
	if err != nil {
		return wrap(err, "acknowledge alert %d", id)
	}
	if affected(res) == 1 {
		return nil
	}
	var n int
	if err := c.queryRow(ctx, `SELECT COUNT(*) FROM alerts WHERE id = ?`, id).Scan(&n); err != nil {
		return wrap(err, "acknowledge alert %d", id)
	}
	if n == 0 {
		return fmt.Errorf("catalog: acknowledge alert %d: %w", id, ErrNotFound)
	}
	return fmt.Errorf("catalog: acknowledge alert %d: %w: already acknowledged", id, ErrConflict)
}

// ---- tapes -----------------------------------------------------------------

// Cartridge is a tape cartridge the server knows.
type Cartridge struct {
	ID      int64  `json:"id"`
	Library string `json:"library"`
	Barcode string `json:"barcode"`
	// Slot is the library slot, -1 when the cartridge is in no slot.
	Slot int `json:"slot"`
	// LabelID is the ID written in the cartridge's label.
	LabelID  string    `json:"label_id"`
	State    string    `json:"state"`
	Capacity int64     `json:"capacity"`
	Used     int64     `json:"used"`
	Created  time.Time `json:"created"`
	Written  time.Time `json:"written,omitzero"`
}

const cartCols = `id, library, barcode, slot, label_id, state, capacity, used, created_at, written_at`

func scanCartridge(s interface{ Scan(...any) error }) (Cartridge, error) {
	var t Cartridge
	var slot, created, written sql.NullInt64
	err := s.Scan(&t.ID, &t.Library, &t.Barcode, &slot, &t.LabelID, &t.State, &t.Capacity, &t.Used, &created, &written)
	t.Slot = -1
	if slot.Valid {
		t.Slot = int(slot.Int64)
	}
	t.Created, t.Written = nt(created), nt(written)
	return t, err
}

// SaveCartridge adds a cartridge, or updates the one with the same label ID
// (it moved slots, filled up, changed state). A barcode already used by
// another cartridge of the library is ErrConflict.
func (c *Catalog) SaveCartridge(ctx context.Context, t Cartridge) (Cartridge, error) {
	if t.Barcode == "" || t.LabelID == "" {
		return t, fmt.Errorf("catalog: save cartridge: %w: barcode and label ID are required", ErrInvalid)
	}
	if t.State == "" {
		t.State = "available"
	}
	var slot any
	if t.Slot >= 0 {
		slot = t.Slot
	}
	var out Cartridge
	err := c.retry(ctx, func() error {
		var err error
		out, err = scanCartridge(c.w.QueryRowContext(ctx, c.rebind(`INSERT INTO tape_cartridges (library, barcode, slot, label_id, state,
			capacity, used, created_at, written_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (label_id) DO UPDATE SET library = excluded.library, barcode = excluded.barcode, slot = excluded.slot,
				state = excluded.state, capacity = excluded.capacity, used = excluded.used,
				written_at = COALESCE(excluded.written_at, tape_cartridges.written_at)
			RETURNING `+cartCols),
			t.Library, t.Barcode, slot, t.LabelID, t.State, t.Capacity, t.Used, c.now().UnixNano(), tn(t.Written)))
		return err
	})
	return out, wrap(err, "save cartridge %s", t.Barcode)
}

// GetCartridge reads a cartridge by ID.
func (c *Catalog) GetCartridge(ctx context.Context, id int64) (Cartridge, error) {
	t, err := scanCartridge(c.queryRow(ctx, `SELECT `+cartCols+` FROM tape_cartridges WHERE id = ?`, id))
	return t, wrap(err, "get cartridge %d", id)
}

// CartridgeByBarcode reads a library's cartridge by barcode.
func (c *Catalog) CartridgeByBarcode(ctx context.Context, library, barcode string) (Cartridge, error) {
	t, err := scanCartridge(c.queryRow(ctx, `SELECT `+cartCols+` FROM tape_cartridges WHERE library = ? AND barcode = ?`, library, barcode))
	return t, wrap(err, "get cartridge %s", barcode)
}

// ListCartridges lists a library's cartridges ("" lists every library's).
func (c *Catalog) ListCartridges(ctx context.Context, library string) ([]Cartridge, error) {
	rows, err := c.query(ctx, `SELECT `+cartCols+` FROM tape_cartridges WHERE (? = '' OR library = ?) ORDER BY library, barcode`, library, library)
	if err != nil {
		return nil, wrap(err, "list cartridges")
	}
	defer rows.Close()
	var out []Cartridge
	for rows.Next() {
		t, err := scanCartridge(rows)
		if err != nil {
			return nil, wrap(err, "list cartridges")
		}
		out = append(out, t)
	}
	return out, wrap(rows.Err(), "list cartridges")
}

// DeleteCartridge forgets a cartridge and what it held.
func (c *Catalog) DeleteCartridge(ctx context.Context, id int64) error {
	return c.deleteByID(ctx, "tape_cartridges", "cartridge", id)
}

// TapeSegment is one contiguous piece of a point's copy on a cartridge.
// A copy (CopyID) of a point is its segments in Seq order; the last has
// Final set.
type TapeSegment struct {
	CopyID      string `json:"copy_id"`
	Seq         int    `json:"seq"`
	PointID     string `json:"point_id"`
	CartridgeID int64  `json:"cartridge_id"`
	// FileNumber is the tape file (counted in filemarks); Offset and
	// Length the bytes within it.
	FileNumber int64     `json:"file_number"`
	Offset     int64     `json:"offset"`
	Length     int64     `json:"length"`
	Final      bool      `json:"final"`
	Written    time.Time `json:"written"`
	// Barcode is filled when reading.
	Barcode string `json:"barcode,omitempty"`
}

// RecordTapeSegments records segments written, in one transaction. A
// (copy, seq) already recorded is ErrConflict.
func (c *Catalog) RecordTapeSegments(ctx context.Context, segs []TapeSegment) error {
	now := c.now().UnixNano()
	err := c.tx(ctx, func(tx *Tx) error {
		for _, s := range segs {
			if s.CopyID == "" || s.PointID == "" {
				return fmt.Errorf("%w: segment needs a copy and a point ID", ErrInvalid)
			}
			w := now
			if !s.Written.IsZero() {
				w = s.Written.UnixNano()
			}
			if _, err := tx.Exec(ctx, `INSERT INTO tape_segments (copy_id, seq, point_id, cartridge_id, file_number,
				byte_offset, length, final, written_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				s.CopyID, s.Seq, s.PointID, s.CartridgeID, s.FileNumber, s.Offset, s.Length, b2i(s.Final), w); err != nil {
				return fmt.Errorf("segment %s/%d: %w", s.CopyID, s.Seq, err)
			}
			if _, err := tx.Exec(ctx, `UPDATE tape_cartridges SET written_at = ? WHERE id = ?`, w, s.CartridgeID); err != nil {
				return err
			}
		}
		return nil
	})
	return wrap(err, "record tape segments")
}

const segCols = `s.copy_id, s.seq, s.point_id, s.cartridge_id, s.file_number, s.byte_offset, s.length, s.final, s.written_at, t.barcode`

func (c *Catalog) segments(ctx context.Context, what, where string, arg any) ([]TapeSegment, error) {
	rows, err := c.query(ctx, `SELECT `+segCols+` FROM tape_segments s JOIN tape_cartridges t ON t.id = s.cartridge_id
		WHERE `+where+` ORDER BY s.copy_id, s.seq`, arg)
	if err != nil {
		return nil, wrap(err, "%s", what)
	}
	defer rows.Close()
	var out []TapeSegment
	for rows.Next() {
		var s TapeSegment
		var final int
		var w sql.NullInt64
		if err := rows.Scan(&s.CopyID, &s.Seq, &s.PointID, &s.CartridgeID, &s.FileNumber, &s.Offset, &s.Length, &final, &w, &s.Barcode); err != nil {
			return nil, wrap(err, "%s", what)
		}
		s.Final, s.Written = final != 0, nt(w)
		out = append(out, s)
	}
	return out, wrap(rows.Err(), "%s", what)
}

// PointSegments lists where a point's tape copies are, by copy and order.
func (c *Catalog) PointSegments(ctx context.Context, pointID string) ([]TapeSegment, error) {
	return c.segments(ctx, "tape segments of point "+pointID, "s.point_id = ?", pointID)
}

// CartridgeSegments lists what a cartridge holds.
func (c *Catalog) CartridgeSegments(ctx context.Context, cartridgeID int64) ([]TapeSegment, error) {
	return c.segments(ctx, "segments on cartridge "+strconv.FormatInt(cartridgeID, 10), "s.cartridge_id = ?", cartridgeID)
}

// ForgetCartridgeContents drops what a cartridge held (it was erased or
// overwritten from the start); other cartridges' parts of the same copies
// are dropped too, since a copy missing a part cannot be read back.
func (c *Catalog) ForgetCartridgeContents(ctx context.Context, cartridgeID int64) (int64, error) {
	var n int64
	err := c.tx(ctx, func(tx *Tx) error {
		r, err := tx.Exec(ctx, `DELETE FROM tape_segments WHERE copy_id IN (SELECT copy_id FROM tape_segments WHERE cartridge_id = ?)`, cartridgeID)
		if err != nil {
			return err
		}
		n = affected(r)
		_, err = tx.Exec(ctx, `UPDATE tape_cartridges SET used = 0 WHERE id = ?`, cartridgeID)
		return err
	})
	return n, wrap(err, "forget contents of cartridge %d", cartridgeID)
}

// PointName summarizes the points of one VM name: how many, and the
// newest's time. Recovery pickers list every name that has points, also
// of VMs that no host reports any more.
type PointName struct {
	Name   string    `json:"name"`
	Points int64     `json:"points"`
	Newest time.Time `json:"newest"`
}

// PointNames lists the VM names that have points, by name, counted in the
// database (one row per name, whatever the number of points).
func (c *Catalog) PointNames(ctx context.Context) ([]PointName, error) {
	rows, err := c.query(ctx, `SELECT name, COUNT(*), MAX(taken_at) FROM points GROUP BY name ORDER BY name`)
	if err != nil {
		return nil, wrap(err, "list point names")
	}
	defer rows.Close()
	var out []PointName
	for rows.Next() {
		var p PointName
		var newest int64
		if err := rows.Scan(&p.Name, &p.Points, &newest); err != nil {
			return nil, wrap(err, "list point names")
		}
		p.Newest = time.Unix(0, newest).UTC()
		out = append(out, p)
	}
	return out, wrap(rows.Err(), "list point names")
}
