package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"text/tabwriter"

	"lifeboat/itemlevel"
	"lifeboat/repo"
)

// cmdItems is item-level recovery: browse, search and extract files inside
// a point's disks without restoring them and without a hypervisor.
func cmdItems(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || (args[0] != "ls" && args[0] != "find" && args[0] != "extract") {
		return usagef("usage: lifeboat items ls|find|extract --repo DIR --point ID [--file DISK] [--volume N] …")
	}
	verb := args[0]
	fs := flag.NewFlagSet("items "+verb, flag.ContinueOnError)
	var rf repoFlags
	rf.register(fs, true)
	point := fs.String("point", "", "point ID")
	file := fs.String("file", "", "disk file of the point (default: its only top-level disk)")
	volume := fs.Int("volume", -1, "volume index as `items ls` lists it (default: the only one with a filesystem)")
	to := fs.String("to", "", "extract: target folder")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if *point == "" {
		return usagef("--point is required")
	}
	r, err := rf.open(ctx, e)
	if err != nil {
		return err
	}
	p, err := r.LoadPoint(ctx, *point)
	if err != nil {
		return err
	}
	disk, err := pickDisk(p, *file)
	if err != nil {
		return err
	}
	img, err := r.OpenFile(ctx, p, disk)
	if err != nil {
		return err
	}
	defer img.Close()
	vols, err := itemlevel.OpenVolumes(ctx, img, img.Size())
	if err != nil {
		return fmt.Errorf("point %s disk %s: %w", p.ID, disk, err)
	}
	if verb == "ls" && *volume < 0 && len(pos) == 0 {
		if rf.json {
			return json.NewEncoder(e.stdout).Encode(vols)
		}
		tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VOLUME\tSTART\tSIZE\tFS\tLABEL\tTYPE")
		for _, v := range vols {
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\n", v.Index, v.Start, human(v.Length), v.FS, v.Label, v.TypeName)
		}
		return tw.Flush()
	}
	vol, err := pickVolume(vols, *volume)
	if err != nil {
		return fmt.Errorf("point %s disk %s: %w", p.ID, disk, err)
	}
	fsys, err := itemlevel.OpenFS(ctx, img, vol)
	if err != nil {
		return err
	}
	defer fsys.Close()
	switch verb {
	case "ls":
		dir := ""
		if len(pos) > 0 {
			dir = pos[0]
		}
		ents, err := fsys.ReadDir(dir)
		if err != nil {
			return err
		}
		if rf.json {
			return json.NewEncoder(e.stdout).Encode(ents)
		}
		tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
		for _, en := range ents {
			kind := "-"
			if en.IsDir {
				kind = "d"
			} else if en.IsSymlink {
				kind = "l"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", kind, en.Size, en.ModTime.Format("2006-01-02 15:04"), en.Name)
		}
		return tw.Flush()
	case "find":
		if len(pos) != 1 {
			return usagef("usage: lifeboat items find … PATTERN")
		}
		found, err := itemlevel.Find(ctx, fsys, "", pos[0], itemlevel.FindOptions{CaseInsensitive: true, Dirs: true})
		if err != nil {
			return err
		}
		if rf.json {
			return json.NewEncoder(e.stdout).Encode(found)
		}
		for _, en := range found {
			fmt.Fprintln(e.stdout, en.Path)
		}
		return nil
	default:
		if len(pos) != 1 || *to == "" {
			return usagef("usage: lifeboat items extract … --to DIR PATH")
		}
		res, err := itemlevel.Extract(ctx, fsys, pos[0], *to, itemlevel.ExtractOptions{})
		if err != nil {
			return err
		}
		if rf.json {
			return json.NewEncoder(e.stdout).Encode(res)
		}
		for _, s := range res.Skipped {
			fmt.Fprintf(e.stdout, "skipped %s: %s\n", s.Path, s.Reason)
		}
		fmt.Fprintf(e.stdout, "extracted %d files, %d folders (%s) into %s\n", res.Files, res.Dirs, human(res.Bytes), *to)
		return nil
	}
}

func pickDisk(p *repo.Point, file string) (string, error) {
	if file != "" {
		return file, nil
	}
	tops := p.TopDisks()
	if len(tops) != 1 {
		return "", usagef("point %s has %d disks (%v): choose one with --file", p.ID, len(tops), tops)
	}
	return tops[0], nil
}

func pickVolume(vols []itemlevel.Volume, index int) (itemlevel.Volume, error) {
	v, err := itemlevel.PickVolume(vols, index)
	if err != nil && index < 0 {
		return v, usageError{fmt.Errorf("%w (see `lifeboat items ls`, then --volume)", err)}
	}
	return v, err
}
