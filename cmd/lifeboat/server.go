package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"lifeboat/server"
)

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// dataDir is --data, $LIFEBOAT_DATA, or ./lifeboat-data.
func dataDir(e *env, flagVal string) string {
	switch {
	case flagVal != "":
		return flagVal
	case e.getenv("LIFEBOAT_DATA") != "":
		return e.getenv("LIFEBOAT_DATA")
	}
	return "lifeboat-data"
}

// daemonLogger is the logger of the server and the agent: JSON lines on
// stderr for journald and log shippers, text on a terminal (format auto),
// or what --log-format says.
func daemonLogger(e *env, format, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch {
	case format == "json" || format == "auto" && !e.tty:
		return slog.New(slog.NewJSONHandler(e.stderr, opts)), nil
	case format == "text" || format == "auto":
		return slog.New(slog.NewTextHandler(e.stderr, opts)), nil
	}
	return nil, usagef("--log-format %q: want auto, json or text", format)
}

const (
	logLevelUsage  = "debug, info, warn or error"
	logFormatUsage = "auto (JSON when stderr is not a terminal or with --json, else text), json or text"
)

func cmdServer(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	data := fs.String("data", "", "data folder: catalog, repository, TLS, admin token (or $LIFEBOAT_DATA; default ./lifeboat-data)")
	listen := fs.String("listen", "127.0.0.1:8443", "address to serve HTTPS on")
	db := fs.String("db", "", "catalog: postgres://… (default: SQLite in the data folder)")
	repoDir := fs.String("repo", "", "repository folder (default: the data folder's repo/, or the one used before)")
	adopt := fs.Bool("adopt-repo", false, "list every point of the repository in the catalog again")
	pwFile := fs.String("password-file", "", "repository password file (or $LIFEBOAT_PASSWORD); a new repository is encrypted with it")
	var names stringList
	fs.Var(&names, "name", "extra host name or IP for the server certificate (repeatable)")
	perVolume := fs.Int("per-volume", 1, "backups at once per shared volume (-1: no limit)")
	perHost := fs.Int("per-host", 1, "backups at once per host (-1: no limit)")
	maxRec := fs.Int("max-recoveries", 8, "recoveries at once")
	maxVB := fs.Int("max-verify-boots", 2, "verify-boot jobs at once (each boots a throwaway guest)")
	tick := fs.Duration("tick", 10*time.Second, "how often the scheduler looks for due backups")
	heartbeat := fs.Duration("heartbeat", 30*time.Second, "heartbeat interval told to agents")
	speed := fs.Float64("clock-speed", 1, "run the scheduler's clock this many times faster (tests and demos)")
	logLevel := fs.String("log-level", "info", logLevelUsage)
	logFormat := fs.String("log-format", "auto", logFormatUsage)
	asJSON := fs.Bool("json", false, "print the start-up summary as one JSON line")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *speed <= 0 {
		return usagef("--clock-speed must be positive")
	}
	log, err := daemonLogger(e, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	pw := e.getenv("LIFEBOAT_PASSWORD")
	if *pwFile != "" {
		b, err := os.ReadFile(*pwFile)
		if err != nil {
			return fmt.Errorf("read password file: %w", err)
		}
		pw = strings.TrimRight(string(b), "\r\n")
	}
	cfg := server.Config{
		DataDir: dataDir(e, *data), DB: *db, RepoDir: *repoDir, Password: pw, AdoptRepo: *adopt, Names: names,
		PerVolume: *perVolume, PerNode: *perHost, MaxRecoveries: *maxRec, MaxVerifyBoots: *maxVB, Tick: *tick, HeartbeatInterval: *heartbeat,
		Version: version, Log: log,
	}
	if *speed != 1 {
		start, k := time.Now(), *speed
		cfg.Clock = func() time.Time { return start.Add(time.Duration(float64(time.Since(start)) * k)) }
	}
	srv, err := server.Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	// A wildcard listener has no address to dial, and the certificate
	// does not name 0.0.0.0: local clients (server.url) use loopback.
	addr := ln.Addr().(*net.TCPAddr)
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
		if addr.IP.To4() == nil {
			host = "::1"
		}
	}
	url := "https://" + net.JoinHostPort(host, strconv.Itoa(addr.Port))
	os.WriteFile(filepath.Join(cfg.DataDir, "server.url"), []byte(url+"\n"), 0o600)
	summary := map[string]any{
		"url": url, "data": cfg.DataDir, "repo": srv.RepoDir(), "ca_fingerprint": srv.CAFingerprint(),
		"ca": filepath.Join(cfg.DataDir, "tls", "ca.pem"), "first_start": srv.FirstStart,
	}
	if srv.AdminToken != "" {
		summary["admin_token"] = srv.AdminToken
	}
	if *adopt {
		summary["adopted"], summary["unlisted"] = srv.Adopted, srv.Unlisted
	}
	if *asJSON {
		json.NewEncoder(e.stdout).Encode(summary)
	} else {
		fmt.Fprintf(e.stdout, "lifeboat server %s listening on %s\n", version, url)
		fmt.Fprintf(e.stdout, "data folder %s, repository %s\n", cfg.DataDir, srv.RepoDir())
		fmt.Fprintf(e.stdout, "CA fingerprint (agents pin it with --ca-fingerprint): %s\n", srv.CAFingerprint())
		if srv.AdminToken != "" {
			fmt.Fprintf(e.stdout, "admin token (shown once; also in %s): %s\n", filepath.Join(cfg.DataDir, "admin-token"), srv.AdminToken)
		}
		if *adopt {
			fmt.Fprintf(e.stdout, "adopted repository: %d points listed again, %d unlisted\n", srv.Adopted, srv.Unlisted)
		}
	}
	if f, ok := e.stdout.(*os.File); ok {
		f.Sync()
	}
	log.Info("server started", "version", version, "url", url, "data", cfg.DataDir, "repo", srv.RepoDir())
	return srv.Serve(ctx, ln)
}
