package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"lifeboat/repo"
	"lifeboat/restore"
	"lifeboat/tape"
	"lifeboat/tape/vtl"
)

// cmdTape copies points to tape and back. Tapes are self-describing:
// `tape scan` and `tape restore` need only the library, no catalog.
func cmdTape(ctx context.Context, e *env, args []string) error {
	const usage = "usage: lifeboat tape library-create|add|write|scan|restore --library DIR …"
	if len(args) == 0 {
		return usagef(usage)
	}
	verb := args[0]
	fs := flag.NewFlagSet("tape "+verb, flag.ContinueOnError)
	var rf repoFlags
	rf.register(fs, true)
	libDir := fs.String("library", "", "virtual tape library folder")
	barcode := fs.String("barcode", "", "add: the cartridge's barcode")
	capacity := fs.Int64("capacity", 400<<30, "add: the cartridge's capacity in bytes")
	point := fs.String("point", "", "write/restore: point ID")
	to := fs.String("to", "", "restore: target folder (else: --repo, to bring the point back into a repository)")
	overwrite := fs.Bool("overwrite", false, "write: overwrite cartridges that hold data")
	plaintext := fs.Bool("plaintext", false, "write: allow copying an encrypted repository's data to tape in plaintext")
	verify := fs.Bool("verify", false, "scan: read and check every block")
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *libDir == "" {
		return usagef(usage)
	}
	if verb == "library-create" {
		if _, err := vtl.Create(*libDir, vtl.Options{}); err != nil {
			return err
		}
		if rf.json {
			return json.NewEncoder(e.stdout).Encode(map[string]string{"library": *libDir})
		}
		fmt.Fprintf(e.stdout, "created tape library %s\n", *libDir)
		return nil
	}
	lib, err := vtl.Open(*libDir)
	if err != nil {
		return err
	}
	switch verb {
	case "add":
		if *barcode == "" {
			return usagef("tape add needs --barcode")
		}
		if err := lib.AddCartridge(*barcode, *capacity, 0); err != nil {
			return err
		}
		if rf.json {
			return json.NewEncoder(e.stdout).Encode(map[string]any{"barcode": *barcode, "capacity": *capacity})
		}
		fmt.Fprintf(e.stdout, "added cartridge %s (%s)\n", *barcode, human(*capacity))
		return nil
	case "write":
		if *point == "" {
			return usagef("tape write needs --point")
		}
		r, err := rf.open(ctx, e)
		if err != nil {
			return err
		}
		p, err := r.LoadPoint(ctx, *point)
		if err != nil {
			return err
		}
		bar := newProgress(e, "tape write "+p.ID)
		res, err := tape.WritePoints(ctx, r, []*repo.Point{p}, lib, tape.WriteOptions{Overwrite: *overwrite, Plaintext: *plaintext, Progress: bar.bytes})
		bar.done()
		if err != nil {
			return err
		}
		if rf.json {
			return json.NewEncoder(e.stdout).Encode(res)
		}
		fmt.Fprintf(e.stdout, "wrote point %s to tape set %s (%s)\n", p.ID, res.Set, human(res.Bytes))
		return nil
	case "scan":
		cat, err := tape.Scan(ctx, lib, tape.ScanOptions{Verify: *verify})
		if err != nil {
			return err
		}
		if rf.json {
			return json.NewEncoder(e.stdout).Encode(cat)
		}
		tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "POINT\tNAME\tTIME\tSET\tCARTRIDGES\tCOMPLETE")
		for _, c := range cat.Copies {
			var carts []string
			for _, p := range c.Parts {
				carts = append(carts, p.Barcode)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\n", c.Point, c.Name, c.Time.Local().Format("2006-01-02 15:04"), c.Set, carts, c.Complete)
		}
		for _, c := range cat.Cartridges {
			if c.Problem != "" {
				fmt.Fprintf(tw, "cartridge %s: %s\n", c.Barcode, c.Problem)
			}
		}
		return tw.Flush()
	case "restore":
		if *point == "" {
			return usagef("tape restore needs --point")
		}
		if *to != "" {
			abs, _ := filepath.Abs(*to)
			if err := os.MkdirAll(abs, 0o755); err != nil {
				return err
			}
			read, bar := newProgress(e, "tape read "+*point), newProgress(e, "restore "+*point)
			res, err := tape.RestoreToFolder(ctx, lib, *point, abs, tape.RestoreOptions{Options: restore.Options{Progress: func(done, total int64) {
				read.done() // the tape is read; the disks are being written
				bar.update(done, total)
			}}, Read: read.bytes})
			read.done()
			bar.done()
			if err != nil {
				return err
			}
			if rf.json {
				return json.NewEncoder(e.stdout).Encode(res)
			}
			fmt.Fprintf(e.stdout, "restored %d files (%s) from tape into %s\n", len(res.Files), human(res.Bytes), abs)
			return nil
		}
		r, err := rf.open(ctx, e)
		if err != nil {
			return err
		}
		bar := newProgress(e, "tape read "+*point)
		p, err := tape.RestoreToRepository(ctx, lib, *point, r, tape.RestoreOptions{Read: bar.bytes})
		bar.done()
		if err != nil {
			return err
		}
		if rf.json {
			return json.NewEncoder(e.stdout).Encode(map[string]string{"point": p.ID, "repository": r.Config().ID})
		}
		fmt.Fprintf(e.stdout, "point %s is back in the repository\n", p.ID)
		return nil
	}
	return usagef(usage)
}
