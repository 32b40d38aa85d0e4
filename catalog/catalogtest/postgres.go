package catalogtest

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver FreshDSN uses

	"lifeboat/internal/testenv"
)

// Postgres gives a test binary a PostgreSQL server: $LIFEBOAT_PG_DSN, or a
// private one started once with scripts/postgres.sh (as root or under CI;
// skipped otherwise). Stop, from TestMain, stops a server this binary
// started.
type Postgres struct {
	once    sync.Once
	dsn     string
	err     string
	started bool
	script  string
}

// DSN returns the server's connection string.
func (p *Postgres) DSN(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("LIFEBOAT_PG_DSN"); d != "" {
		return d
	}
	if os.Geteuid() != 0 && os.Getenv("CI") == "" {
		t.Skip("PostgreSQL: set LIFEBOAT_PG_DSN, or run as root to start one with scripts/postgres.sh")
	}
	p.once.Do(func() {
		p.script = filepath.Join(testenv.RepoRoot(t), "scripts", "postgres.sh")
		if exec.Command("bash", p.script, "status").Run() != nil {
			p.started = true
		}
		cmd := exec.Command("bash", p.script, "start")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			p.err = "scripts/postgres.sh start: " + err.Error() + "\n" + stderr.String()
			return
		}
		f := strings.Fields(strings.TrimSpace(string(out)))
		if len(f) == 0 {
			p.err = "scripts/postgres.sh start printed no DSN"
			return
		}
		p.dsn = f[len(f)-1]
	})
	if p.err != "" {
		t.Fatal(p.err)
	}
	return p.dsn
}

// Stop stops the server if DSN started it.
func (p *Postgres) Stop() {
	if p.started && p.script != "" {
		exec.Command("bash", p.script, "stop").Run()
	}
}

// FreshDSN makes an empty schema for one test and returns the server's
// DSN with that schema as its search path; the schema is dropped when the
// test ends (after cleanups registered later, such as a server's close).
func (p *Postgres) FreshDSN(t *testing.T) string {
	t.Helper()
	dsn := p.DSN(t)
	var b [6]byte
	rand.Read(b[:])
	schema := "lbtest_" + hex.EncodeToString(b[:])
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE SCHEMA ` + schema); err != nil {
		db.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Exec(`DROP SCHEMA ` + schema + ` CASCADE`)
		db.Close()
	})
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + "search_path=" + schema
}
