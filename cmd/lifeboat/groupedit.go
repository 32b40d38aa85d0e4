package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"lifeboat/api"
)

// cmdGroupSet is `lifeboat group set NAME`: change a group's schedule,
// retention and options; only the flags given change.
func cmdGroupSet(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("group set", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	full := fs.String("full", "", "times of day of full-read points, HH:MM[,HH:MM…] (\"none\": no scheduled full)")
	tz := fs.String("time-zone", "", "time zone of --full")
	inc := fs.String("incremental", "", "interval of incremental points (15m to 24h; \"none\" for no incrementals)")
	days := fs.Int("retention-days", -1, "keep points this many days")
	count := fs.Int("retention-count", -1, "keep at least this many points per VM")
	offline := fs.String("offline-fallback", "", "true or false: fall back to an offline backup when an online one is not possible")
	verifyBoot := fs.String("verify-boot", "", "true or false: verify-boot each new point")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("usage: lifeboat group set NAME [--full HH:MM,…|none] [--incremental 1h|none] [--retention-days N] [--retention-count N] [--offline-fallback true|false] [--verify-boot true|false]")
	}
	var u api.GroupUpdate
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["full"] {
		ft := []string{}
		if *full != "none" && *full != "" {
			ft = strings.Split(*full, ",")
		}
		u.FullTimes = &ft
	}
	if set["time-zone"] {
		u.TimeZone = tz
	}
	if set["incremental"] {
		v := *inc
		if v == "none" {
			v = ""
		}
		u.Incremental = &v
	}
	if set["retention-days"] {
		u.RetentionDays = days
	}
	if set["retention-count"] {
		u.RetentionCount = count
	}
	for name, dst := range map[string]**bool{"offline-fallback": &u.OfflineFallback, "verify-boot": &u.VerifyBoot} {
		if !set[name] {
			continue
		}
		v := map[string]string{"offline-fallback": *offline, "verify-boot": *verifyBoot}[name]
		if v != "true" && v != "false" {
			return usagef("--%s takes true or false", name)
		}
		b := v == "true"
		*dst = &b
	}
	if len(set) == 0 {
		return usagef("nothing to change: give at least one setting")
	}
	var out api.Group
	if err := cf.call(ctx, e, http.MethodPatch, api.Prefix+"/groups/"+url.PathEscape(pos[0]), u, &out); err != nil || cf.json {
		return err
	}
	printGroup(e, out)
	return nil
}

// cmdGroupRemove is `lifeboat group remove NAME VM…`: the VMs leave the
// group (their points stay).
func cmdGroupRemove(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("group remove", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return usagef("usage: lifeboat group remove NAME VM…")
	}
	for _, vm := range pos[1:] {
		if err := cf.quiet(ctx, e, http.MethodDelete, api.Prefix+"/groups/"+url.PathEscape(pos[0])+"/members/"+url.PathEscape(vm), nil, nil); err != nil {
			return err
		}
	}
	if cf.json {
		return writeJSONOut(e, map[string]any{"group": pos[0], "removed": pos[1:]})
	}
	fmt.Fprintf(e.stdout, "removed %s from group %s\n", strings.Join(pos[1:], ", "), pos[0])
	return nil
}
