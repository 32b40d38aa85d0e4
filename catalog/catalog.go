// Package catalog is the server's SQL catalog: clusters, nodes (agents),
// enrollment tokens, shared volumes, VMs, protection groups, jobs and their
// logs, recovery points, alerts and the tape catalog.
//
// One schema and one set of queries run on two databases, chosen by the DSN
// given to Open:
//
//   - SQLite (modernc.org/sqlite, no cgo), the default: a file path or
//     sqlite:///path. WAL journal, busy_timeout, foreign keys on; all writes
//     go through one connection (transactions begin IMMEDIATE), reads through
//     a small pool of read-only connections.
//   - PostgreSQL (pgx's database/sql driver): postgres://… or postgresql://….
//
// Queries are written once with '?' placeholders, rewritten to $n for
// PostgreSQL. Types are those both accept: TEXT, INTEGER, BIGINT and DOUBLE
// PRECISION. Times are stored as Unix nanoseconds (BIGINT, UTC by nature;
// NULL for "never"), booleans as INTEGER 0/1, JSON as TEXT. The one
// per-dialect word is the auto-increment primary key ({{id}} in the
// migrations).
//
// Every method takes a context and wraps its errors with what it was doing.
// errors.Is tells ErrNotFound, ErrConflict, ErrExpired and ErrInvalid apart.
package catalog

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	"modernc.org/sqlite"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrNotFound: the row asked for does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the change clashes with the current state (a duplicate
	// name, a job no longer queued, a token already used, a row still in use).
	ErrConflict = errors.New("conflict")
	// ErrExpired: an enrollment token past its expiry.
	ErrExpired = errors.New("expired")
	// ErrInvalid: a value the catalog refuses to store.
	ErrInvalid = errors.New("invalid")
)

// Dialect names.
const (
	SQLite   = "sqlite"
	Postgres = "postgres"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Catalog is an open catalog. It is safe for concurrent use.
type Catalog struct {
	dialect string
	// w takes every write and every transaction; for SQLite it has exactly
	// one connection, so writers queue in-process instead of fighting over
	// the file lock. r serves plain reads (for PostgreSQL, r == w).
	w, r *sql.DB
	now  func() time.Time
}

// Open opens (creating if needed) and migrates the catalog named by dsn:
// a file path or sqlite:///path for SQLite, postgres://… for PostgreSQL.
func Open(ctx context.Context, dsn string) (*Catalog, error) {
	c := &Catalog{now: time.Now}
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, fmt.Errorf("catalog: open postgres: %w", err)
		}
		db.SetMaxOpenConns(16)
		db.SetMaxIdleConns(8)
		db.SetConnMaxIdleTime(5 * time.Minute)
		c.dialect, c.w, c.r = Postgres, db, db
	default:
		file := strings.TrimPrefix(dsn, "sqlite://")
		if file == "" {
			return nil, fmt.Errorf("catalog: open: empty database path")
		}
		if i := strings.IndexByte(file, '?'); i >= 0 {
			return nil, fmt.Errorf("catalog: open %s: options in a SQLite DSN are not supported", dsn)
		}
		const common = "_busy_timeout=10000&_foreign_keys=1"
		w, err := sql.Open("sqlite", file+"?"+common+"&_journal_mode=WAL&_synchronous=NORMAL&_txlock=immediate")
		if err != nil {
			return nil, fmt.Errorf("catalog: open sqlite %s: %w", file, err)
		}
		w.SetMaxOpenConns(1)
		w.SetMaxIdleConns(1)
		w.SetConnMaxLifetime(0)
		w.SetConnMaxIdleTime(0)
		c.dialect, c.w, c.r = SQLite, w, w
		// The writer connects first so the file exists and is in WAL mode
		// before readers open it.
		if err := w.PingContext(ctx); err != nil {
			w.Close()
			return nil, fmt.Errorf("catalog: open sqlite %s: %w", file, err)
		}
		if file != ":memory:" && !strings.Contains(file, "mode=memory") {
			r, err := sql.Open("sqlite", file+"?"+common+"&_query_only=1")
			if err != nil {
				w.Close()
				return nil, fmt.Errorf("catalog: open sqlite %s: %w", file, err)
			}
			r.SetMaxOpenConns(4)
			r.SetMaxIdleConns(4)
			c.r = r
		}
	}
	if err := c.w.PingContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("catalog: connect %s: %w", c.dialect, err)
	}
	if _, err := c.Migrate(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the database handles.
func (c *Catalog) Close() error {
	err := c.w.Close()
	if c.r != c.w {
		if e := c.r.Close(); err == nil {
			err = e
		}
	}
	return err
}

// Dialect is SQLite or Postgres.
func (c *Catalog) Dialect() string { return c.dialect }

// SetClock replaces the clock the catalog stamps rows with (tests).
func (c *Catalog) SetClock(now func() time.Time) { c.now = now }

// DB is the underlying write handle, for tests and diagnostics only.
func (c *Catalog) DB() *sql.DB { return c.w }

// ---- migrations ------------------------------------------------------------

type migration struct {
	version int
	name    string
	sql     string
}

func loadMigrations() ([]migration, error) {
	ents, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range ents {
		n := e.Name()
		num, _, ok := strings.Cut(n, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a number and '_'", n)
		}
		b, err := migrationFS.ReadFile(path.Join("migrations", n))
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{v, n, string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s share a number", ms[i-1].name, ms[i].name)
		}
	}
	return ms, nil
}

// statements splits a migration into statements (on ';' at the end of a
// line) and expands the dialect words.
func (c *Catalog) statements(src string) []string {
	id := "INTEGER PRIMARY KEY AUTOINCREMENT"
	if c.dialect == Postgres {
		id = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
	}
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(src, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(t, ";") {
			out = append(out, strings.ReplaceAll(cur.String(), "{{id}}", id))
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, strings.ReplaceAll(s, "{{id}}", id))
	}
	return out
}

// Migrate applies the embedded migrations not yet recorded in
// schema_migrations, each in its own transaction together with its record.
// It returns how many it applied; running it again applies none.
func (c *Catalog) Migrate(ctx context.Context) (int, error) {
	ms, err := loadMigrations()
	if err != nil {
		return 0, fmt.Errorf("catalog: load migrations: %w", err)
	}
	if _, err := c.w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)`); err != nil {
		// Two servers creating it at once on PostgreSQL: one loses the
		// race on the catalog's unique index; the table exists either way.
		if !isUnique(err) {
			return 0, fmt.Errorf("catalog: create schema_migrations: %w", err)
		}
	}
	applied := 0
	for _, m := range ms {
		var done bool
		err := c.tx(ctx, func(tx *Tx) error {
			var n int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, m.version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				done = true
				return nil
			}
			// Recording first takes the row lock: a concurrent migrator
			// waits here and then fails on the key instead of running the
			// statements twice.
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, c.now().UnixNano()); err != nil {
				return err
			}
			for _, s := range c.statements(m.sql) {
				if _, err := tx.tx.ExecContext(ctx, s); err != nil {
					return fmt.Errorf("%s: %w\n%s", m.name, err, s)
				}
			}
			return nil
		})
		if err != nil {
			if isUnique(err) {
				continue // another process applied it meanwhile
			}
			return applied, fmt.Errorf("catalog: migrate to %d: %w", m.version, err)
		}
		if !done {
			applied++
		}
	}
	return applied, nil
}

// SchemaVersion is the highest applied migration.
func (c *Catalog) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	if err := c.r.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("catalog: schema version: %w", err)
	}
	return int(v.Int64), nil
}

// ---- query plumbing --------------------------------------------------------

// rebind rewrites '?' placeholders to $1, $2… for PostgreSQL, leaving
// quoted strings alone.
func (c *Catalog) rebind(q string) string {
	if c.dialect != Postgres || !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n, quoted := 0, false
	for i := 0; i < len(q); i++ {
		ch := q[i]
		switch {
		case ch == '\'':
			quoted = !quoted
		case ch == '?' && !quoted:
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(ch)
	}
	return b.String()
}

func (c *Catalog) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	var res sql.Result
	err := c.retry(ctx, func() error {
		var err error
		res, err = c.w.ExecContext(ctx, c.rebind(q), args...)
		return err
	})
	return res, err
}

func (c *Catalog) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return c.r.QueryContext(ctx, c.rebind(q), args...)
}

func (c *Catalog) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	return c.r.QueryRowContext(ctx, c.rebind(q), args...)
}

// Tx is a write transaction.
type Tx struct {
	c  *Catalog
	tx *sql.Tx
}

// Exec runs a statement in the transaction.
func (t *Tx) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return t.tx.ExecContext(ctx, t.c.rebind(q), args...)
}

// Query runs a query in the transaction.
func (t *Tx) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return t.tx.QueryContext(ctx, t.c.rebind(q), args...)
}

// QueryRow runs a one-row query in the transaction.
func (t *Tx) QueryRow(ctx context.Context, q string, args ...any) *sql.Row {
	return t.tx.QueryRowContext(ctx, t.c.rebind(q), args...)
}

// tx runs fn in a write transaction, retrying the whole of it on SQLITE_BUSY
// and on PostgreSQL serialization failures and deadlocks. fn must use only
// the Tx (a call to c.exec inside it would wait for the one SQLite writer
// connection forever).
func (c *Catalog) tx(ctx context.Context, fn func(*Tx) error) error {
	return c.retry(ctx, func() error {
		stx, err := c.w.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := fn(&Tx{c, stx}); err != nil {
			stx.Rollback()
			return err
		}
		return stx.Commit()
	})
}

func (c *Catalog) retry(ctx context.Context, fn func() error) error {
	delay := 2 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := fn()
		if err == nil || attempt >= 8 || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay + time.Duration(rand.Int64N(int64(delay)))):
		}
		delay *= 2
	}
}

func retryable(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		code := se.Code() & 0xff
		return code == 5 || code == 6 // SQLITE_BUSY, SQLITE_LOCKED
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "40001" || pe.Code == "40P01"
	}
	return false
}

func isUnique(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == 2067 || se.Code() == 1555 ||
			(se.Code()&0xff == 19 && strings.Contains(se.Error(), "UNIQUE"))
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	return false
}

func isForeignKey(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == 787 || (se.Code()&0xff == 19 && strings.Contains(se.Error(), "FOREIGN KEY"))
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23503"
	}
	return false
}

// wrap turns a driver error into the catalog's: "catalog: <what>: <err>",
// with constraint violations mapped onto the sentinels. A foreign key
// violation means a missing referenced row when inserting or updating
// (ErrNotFound) and a row still referenced when deleting (ErrConflict).
func wrap(err error, what string, args ...any) error {
	if err == nil {
		return nil
	}
	w := fmt.Sprintf(what, args...)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("catalog: %s: %w", w, ErrNotFound)
	case isUnique(err):
		return fmt.Errorf("catalog: %s: %w: %v", w, ErrConflict, err)
	case isForeignKey(err):
		if strings.HasPrefix(w, "delete") {
			return fmt.Errorf("catalog: %s: %w: still referenced: %v", w, ErrConflict, err)
		}
		return fmt.Errorf("catalog: %s: %w: a referenced row is missing: %v", w, ErrNotFound, err)
	}
	return fmt.Errorf("catalog: %s: %w", w, err)
}

// ---- value helpers ---------------------------------------------------------

// tn stores a time as Unix nanoseconds, the zero time as NULL.
func tn(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixNano()
}

// nt reads a stored time back (UTC).
func nt(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.Unix(0, v.Int64).UTC()
}

// ni stores an ID, 0 as NULL.
func ni(id int64) any {
	if id == 0 {
		return nil
	}
	return id
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// in makes "?, ?, ?" for n arguments.
func in(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

func affected(res sql.Result) int64 {
	n, err := res.RowsAffected()
	if err != nil {
		return -1
	}
	return n
}

// ---- stats -----------------------------------------------------------------

// Stats counts rows, for metrics.
type Stats struct {
	Clusters      int64            `json:"clusters"`
	Nodes         int64            `json:"nodes"`
	NodesEnrolled int64            `json:"nodes_enrolled"`
	SharedVolumes int64            `json:"shared_volumes"`
	VMs           int64            `json:"vms"`
	Groups        int64            `json:"groups"`
	GroupMembers  int64            `json:"group_members"`
	Points        int64            `json:"points"`
	Jobs          map[string]int64 `json:"jobs"` // by state
	AlertsOpen    int64            `json:"alerts_open"`
	Cartridges    int64            `json:"cartridges"`
	TapeSegments  int64            `json:"tape_segments"`
}

// Stats counts the catalog's rows.
func (c *Catalog) Stats(ctx context.Context) (Stats, error) {
	s := Stats{Jobs: map[string]int64{}}
	err := c.queryRow(ctx, `SELECT
		(SELECT COUNT(*) FROM clusters),
		(SELECT COUNT(*) FROM nodes),
		(SELECT COUNT(*) FROM nodes WHERE state = 'enrolled'),
		(SELECT COUNT(*) FROM shared_volumes),
		(SELECT COUNT(*) FROM vms),
		(SELECT COUNT(*) FROM protection_groups),
		(SELECT COUNT(*) FROM group_members),
		(SELECT COUNT(*) FROM points),
		(SELECT COUNT(*) FROM alerts WHERE acknowledged_at IS NULL),
		(SELECT COUNT(*) FROM tape_cartridges),
		(SELECT COUNT(*) FROM tape_segments)`).Scan(
		&s.Clusters, &s.Nodes, &s.NodesEnrolled, &s.SharedVolumes, &s.VMs, &s.Groups,
		&s.GroupMembers, &s.Points, &s.AlertsOpen, &s.Cartridges, &s.TapeSegments)
	if err != nil {
		return s, wrap(err, "stats")
	}
	rows, err := c.query(ctx, `SELECT state, COUNT(*) FROM jobs GROUP BY state`)
	if err != nil {
		return s, wrap(err, "stats: jobs")
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return s, wrap(err, "stats: jobs")
		}
		s.Jobs[st] = n
	}
	return s, wrap(rows.Err(), "stats: jobs")
}
