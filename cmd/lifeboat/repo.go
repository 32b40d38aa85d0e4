package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"lifeboat/repo"
	"lifeboat/repo/storage/local"
)

// repoFlags are the flags every repository command shares.
type repoFlags struct {
	dir          string
	passwordFile string
	json         bool
}

func (f *repoFlags) register(fs *flag.FlagSet, withJSON bool) {
	fs.StringVar(&f.dir, "repo", "", "repository folder (or $LIFEBOAT_REPO)")
	fs.StringVar(&f.passwordFile, "password-file", "", "file holding the repository password (or $LIFEBOAT_PASSWORD)")
	if withJSON {
		fs.BoolVar(&f.json, "json", false, "machine-readable output")
	}
}

func (f *repoFlags) location(e *env) (string, error) {
	d := f.dir
	if d == "" {
		d = e.getenv("LIFEBOAT_REPO")
	}
	if d == "" {
		return "", usagef("no repository: give --repo DIR or set LIFEBOAT_REPO")
	}
	return d, nil
}

func (f *repoFlags) password(e *env) (string, error) {
	if f.passwordFile != "" {
		b, err := os.ReadFile(f.passwordFile)
		if err != nil {
			return "", fmt.Errorf("read password file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return e.getenv("LIFEBOAT_PASSWORD"), nil
}

func (f *repoFlags) open(ctx context.Context, e *env) (*repo.Repository, error) {
	dir, err := f.location(e)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("open repository: %w", err)
	}
	b, err := local.Open(dir)
	if err != nil {
		return nil, err
	}
	pw, err := f.password(e)
	if err != nil {
		return nil, err
	}
	return repo.Open(ctx, b, pw)
}

func cmdRepo(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] != "init" {
		return usagef("usage: lifeboat repo init --repo DIR [--encrypt] [--hash blake3|sha256] [--chunk-size BYTES]")
	}
	fs := flag.NewFlagSet("repo init", flag.ContinueOnError)
	var rf repoFlags
	rf.register(fs, true)
	encrypt := fs.Bool("encrypt", false, "encrypt with AES-256-GCM; the password comes from --password-file or $LIFEBOAT_PASSWORD")
	hash := fs.String("hash", repo.HashBLAKE3, "chunk hash: blake3 or sha256")
	chunk := fs.Int("chunk-size", repo.DefaultChunkSize, "chunk size in bytes (power of two)")
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	dir, err := rf.location(e)
	if err != nil {
		return err
	}
	opts := repo.InitOptions{ChunkSize: *chunk, Hash: *hash}
	if *encrypt {
		if opts.Password, err = rf.password(e); err != nil {
			return err
		}
		if opts.Password == "" {
			return usagef("--encrypt needs a password: --password-file FILE or LIFEBOAT_PASSWORD")
		}
	}
	b, err := local.Open(dir)
	if err != nil {
		return err
	}
	r, err := repo.Init(ctx, b, opts)
	if err != nil {
		return err
	}
	if rf.json {
		return json.NewEncoder(e.stdout).Encode(r.Config())
	}
	fmt.Fprintf(e.stdout, "created repository %s at %s (chunk %d, %s, encrypted %v)\n", r.Config().ID, dir, r.Config().ChunkSize, r.Config().Hash, *encrypt)
	return nil
}
