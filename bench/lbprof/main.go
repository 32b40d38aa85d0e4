// Command lbprof runs one lifeboat backup or restore in-process under the
// Go profiler, to see where the time goes (bench/run.sh measures the CLI;
// this only explains it):
//
//	lbprof backup  -repo DIR [-hash blake3|sha256] [-changed MAP] [-cpuprofile F] [-blockprofile F] [-memprofile F] [-trace F] IMAGE
//	lbprof restore -repo DIR [-point ID] -to DIR [-cpuprofile F] [-blockprofile F]
//
// backup initialises DIR as a repository when it holds none. restore takes
// the newest point when -point is not given. Read a profile with
// `go tool pprof -top -cum lbprof F` or `-top` for flat costs.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"time"

	"lifeboat/backup"
	"lifeboat/disk"
	"lifeboat/repo"
	"lifeboat/repo/storage"
	"lifeboat/repo/storage/local"
	"lifeboat/restore"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: lbprof backup|restore [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dir := fs.String("repo", "", "repository folder")
	hash := fs.String("hash", "", "hash of a new repository")
	cpu := fs.String("cpuprofile", "", "write a CPU profile here")
	mem := fs.String("memprofile", "", "write a heap profile (after the run) here")
	block := fs.String("blockprofile", "", "write a blocking profile (channel waits, locks) here")
	point := fs.String("point", "", "restore: point ID (newest by default)")
	to := fs.String("to", "", "restore: target folder")
	changed := fs.String("changed", "", "backup: change map [[offset,length],…] since the previous point")
	trc := fs.String("trace", "", "write an execution trace (where wall time goes: I/O waits, syncs) here")
	fs.Parse(os.Args[2:])
	if *trc != "" {
		f, err := os.Create(*trc)
		if err == nil {
			err = trace.Start(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "lbprof:", err)
			os.Exit(1)
		}
		defer f.Close()
		defer trace.Stop()
	}
	ctx := context.Background()
	if *block != "" {
		runtime.SetBlockProfileRate(int(time.Millisecond))
	}
	err := run(ctx, os.Args[1], *dir, *hash, *cpu, *mem, *point, *to, *changed, fs.Args())
	if err == nil && *block != "" {
		err = writeProfile("block", *block)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lbprof:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, mode, dir, hash, cpu, mem, point, to, changed string, args []string) error {
	b, err := local.Open(dir)
	if err != nil {
		return err
	}
	var r *repo.Repository
	if _, err := b.Stat(ctx, "config"); errors.Is(err, storage.ErrNotFound) && mode == "backup" {
		r, err = repo.Init(ctx, b, repo.InitOptions{Hash: hash})
		if err != nil {
			return err
		}
	} else if r, err = repo.Open(ctx, b, ""); err != nil {
		return err
	}
	if cpu != "" {
		f, err := os.Create(cpu)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	switch mode {
	case "backup":
		if len(args) != 1 {
			return fmt.Errorf("backup takes one IMAGE")
		}
		src, err := backup.Scan(ctx, args[0])
		if err != nil {
			return err
		}
		opts := backup.Options{Name: "prof"}
		if changed != "" {
			data, err := os.ReadFile(changed)
			if err != nil {
				return err
			}
			var pairs [][2]int64
			if err := json.Unmarshal(data, &pairs); err != nil {
				return fmt.Errorf("change map %s: %w", changed, err)
			}
			var ext []disk.Extent
			for _, p := range pairs {
				ext = append(ext, disk.Extent{Offset: p[0], Length: p[1], Kind: disk.Data})
			}
			opts.Changed = map[string][]disk.Extent{src.Files[0].Path: ext}
		}
		pt, err := backup.Run(ctx, r, src, opts)
		if err != nil {
			return err
		}
		var st repo.Stats
		for _, f := range pt.Files {
			st.Add(f.Stats)
		}
		fmt.Printf("point %s: read %d, %d chunks, %d new (%d bytes stored) in %.2fs\n",
			pt.ID, st.BytesRead, st.Chunks, st.NewChunks, st.NewBytes, time.Since(start).Seconds())
	case "restore":
		if point == "" {
			ids, err := r.PointIDs(ctx)
			if err != nil || len(ids) == 0 {
				return fmt.Errorf("no point to restore (%v)", err)
			}
			point = ids[len(ids)-1]
		}
		p, err := r.LoadPoint(ctx, point)
		if err != nil {
			return err
		}
		res, err := restore.Run(ctx, r, p, to, restore.Options{})
		if err != nil {
			return err
		}
		fmt.Printf("restored %d files, %d bytes in %.2fs\n", len(res.Files), res.Bytes, time.Since(start).Seconds())
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	if mem != "" {
		runtime.GC()
		return writeProfile("heap", mem)
	}
	return nil
}

func writeProfile(name, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
