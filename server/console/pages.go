package console

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
)

// call runs one API call as the session's admin. An API that no longer
// takes the session's token (the admin token changed) ends the session.
func (c *Console) call(r *http.Request, s *session, method, path string, in, out any) error {
	_, err := c.client(s).Do(r.Context(), method, path, in, out)
	return err
}

// errText is an API error as an operator reads it.
func errText(err error) string {
	var he *api.HTTPError
	if errors.As(err, &he) && he.Body.Error != "" {
		return he.Body.Error
	}
	return err.Error()
}

// fetcher gathers a page's API reads and remembers the first failure.
type fetcher struct {
	c   *Console
	r   *http.Request
	s   *session
	err error
}

func (f *fetcher) get(path string, out any) bool {
	if err := f.c.call(f.r, f.s, http.MethodGet, path, nil, out); err != nil {
		if f.err == nil {
			f.err = fmt.Errorf("GET %s: %s", path, errText(err))
		}
		return false
	}
	return true
}

func (f *fetcher) errString() string {
	if f.err == nil {
		return ""
	}
	return f.err.Error()
}

// unauthorized reports whether the API refused the session's token.
func unauthorized(err error) bool { return api.StatusOf(err) == http.StatusUnauthorized }

// ---- overview ------------------------------------------------------------------

type nodeView struct {
	catalog.Node
	Health, HealthClass string
}

type clusterView struct {
	catalog.Cluster
	Nodes   []nodeView
	Volumes []catalog.SharedVolume
}

type vmView struct {
	catalog.VMStatus
	Next                string
	RPO, RPOClass, Tip  string
	Interval            time.Duration
	LastAgo, LastPointS string
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	f := &fetcher{c: c, r: r, s: s}
	var st api.Status
	var clusters []catalog.Cluster
	var nodes []catalog.Node
	var vms []catalog.VMStatus
	var groups []api.Group
	var jobs []catalog.Job
	var alerts []catalog.Alert
	f.get(api.Prefix+"/status", &st)
	f.get(api.Prefix+"/clusters", &clusters)
	f.get(api.Prefix+"/agents", &nodes)
	f.get(api.Prefix+"/vms", &vms)
	f.get(api.Prefix+"/groups", &groups)
	f.get(api.Prefix+"/jobs?state=running&state=queued&limit=50", &jobs)
	f.get(api.Prefix+"/alerts?open=true&limit=5", &alerts)
	if unauthorized(f.err) {
		c.expired(w, r)
		return
	}
	now := c.opt.Now()
	byCluster := map[int64]*clusterView{}
	var cvs []*clusterView
	for _, cl := range clusters {
		cv := &clusterView{Cluster: cl}
		f.get(api.Prefix+"/clusters/"+strconv.FormatInt(cl.ID, 10)+"/volumes", &cv.Volumes)
		byCluster[cl.ID] = cv
		cvs = append(cvs, cv)
	}
	standalone := &clusterView{Cluster: catalog.Cluster{Name: "(no cluster)"}}
	for _, n := range nodes {
		nv := nodeView{Node: n}
		nv.Health, nv.HealthClass = nodeHealth(n, now)
		if cv := byCluster[n.ClusterID]; cv != nil {
			cv.Nodes = append(cv.Nodes, nv)
		} else {
			standalone.Nodes = append(standalone.Nodes, nv)
		}
	}
	if len(standalone.Nodes) > 0 {
		cvs = append(cvs, standalone)
	}
	groupByID := map[int64]api.Group{}
	for _, g := range groups {
		groupByID[g.ID] = g
	}
	var vvs []vmView
	missed := 0
	for _, v := range vms {
		vv := protection(v, groupByID[v.GroupID], now)
		if vv.RPOClass == "bad" {
			missed++
		}
		vvs = append(vvs, vv)
	}
	c.render(w, r, http.StatusOK, "overview", s, map[string]any{
		"Title": "Overview", "Status": st, "Clusters": cvs, "VMs": vvs, "Jobs": jobs, "Alerts": alerts,
		"Groups": groups, "Missed": missed, "Error": f.errString(),
	})
}

// nodeHealth says whether an agent is heard from.
func nodeHealth(n catalog.Node, now time.Time) (string, string) {
	switch {
	case n.State != catalog.NodeEnrolled:
		return n.State, "bad"
	case n.LastHeartbeat.IsZero():
		return "never heard from", "warn"
	case now.Sub(n.LastHeartbeat) <= 2*time.Minute:
		return "healthy", "ok"
	default:
		return "silent for " + ago(now, n.LastHeartbeat), "bad"
	}
}

// protection computes a VM's next point and whether its recovery-point
// objective holds: the objective is the group's interval (incremental, or
// 24h for a group of daily fulls), with a quarter of it as grace for the
// backup itself to run.
func protection(v catalog.VMStatus, g api.Group, now time.Time) vmView {
	vv := vmView{VMStatus: v}
	if !v.Protected() {
		vv.RPO, vv.RPOClass, vv.Next = "unprotected", "muted", "—"
		vv.Tip = "add it to a protection group"
		return vv
	}
	interval := 24 * time.Hour
	if d, err := time.ParseDuration(g.Incremental); err == nil && d > 0 {
		interval = d
	}
	vv.Interval = interval
	if v.LastPoint.IsZero() {
		vv.RPO, vv.RPOClass, vv.Next = "no point yet", "warn", "pending"
		vv.Tip = "the first backup is queued by the scheduler; run the group to start now"
		return vv
	}
	vv.LastAgo = ago(now, v.LastPoint)
	next := v.LastPoint.Add(interval)
	if next.Before(now) {
		vv.Next = "due now"
	} else {
		vv.Next = "in " + human(next.Sub(now))
	}
	if now.Sub(v.LastPoint) <= interval+interval/4 {
		vv.RPO, vv.RPOClass = "met", "ok"
	} else {
		vv.RPO, vv.RPOClass = "missed", "bad"
		vv.Tip = "no point for " + human(now.Sub(v.LastPoint)) + " (objective " + human(interval) + "): see Jobs"
	}
	return vv
}

func (c *Console) expired(w http.ResponseWriter, r *http.Request) {
	if id, _ := c.lookup(r); id != "" {
		c.dropSession(id)
	}
	http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
}

// ---- protection ------------------------------------------------------------------

func (c *Console) protection(w http.ResponseWriter, r *http.Request, s *session) {
	f := &fetcher{c: c, r: r, s: s}
	var groups []api.Group
	var vms []catalog.VMStatus
	f.get(api.Prefix+"/groups", &groups)
	f.get(api.Prefix+"/vms", &vms)
	if unauthorized(f.err) {
		c.expired(w, r)
		return
	}
	unprotected := 0
	for _, v := range vms {
		if !v.Protected() {
			unprotected++
		}
	}
	c.render(w, r, http.StatusOK, "protection", s, map[string]any{"Title": "Protection", "Groups": groups,
		"Unprotected": unprotected, "VMCount": len(vms), "Error": f.errString()})
}

// wizardItem is one row of the protection wizard: a VM that can be
// protected, or something shown with the reason it cannot be.
type wizardItem struct {
	Name, Where, State, Why string
	Protectable, Checked    bool
}

func (c *Console) wizardItems(f *fetcher, checked map[string]bool) []wizardItem {
	var vms []catalog.VMStatus
	var clusters []catalog.Cluster
	f.get(api.Prefix+"/vms", &vms)
	f.get(api.Prefix+"/clusters", &clusters)
	var items []wizardItem
	for _, cl := range clusters {
		var vols []catalog.SharedVolume
		f.get(api.Prefix+"/clusters/"+strconv.FormatInt(cl.ID, 10)+"/volumes", &vols)
		for _, v := range vols {
			items = append(items, wizardItem{Name: v.Path, Where: "shared volume " + v.VolumeID + " of cluster " + cl.Name,
				Why: "The root of a shared volume is not a VM: only VM data is backed up from a cluster shared volume. Protect the VMs on it below."})
		}
	}
	for _, v := range vms {
		where := v.OwnerName
		if v.VolumeID != "" {
			where += " · volume " + v.VolumeID
		}
		it := wizardItem{Name: v.Name, Where: where, State: v.State, Protectable: !v.Protected(), Checked: checked[v.Name]}
		if v.Protected() {
			it.Why = "already protected by group " + v.GroupName
		}
		items = append(items, it)
	}
	return items
}

func (c *Console) groupWizard(w http.ResponseWriter, r *http.Request, s *session) {
	f := &fetcher{c: c, r: r, s: s}
	checked := map[string]bool{}
	for _, v := range r.URL.Query()["vm"] {
		checked[v] = true
	}
	items := c.wizardItems(f, checked)
	if unauthorized(f.err) {
		c.expired(w, r)
		return
	}
	c.render(w, r, http.StatusOK, "wizard", s, map[string]any{"Title": "New protection group", "Items": items,
		"Form":  map[string]string{"incremental": "1h", "full_times": "", "retention_days": "14", "time_zone": "UTC"},
		"Error": f.errString()})
}

func (c *Console) createGroup(w http.ResponseWriter, r *http.Request, s *session) {
	form := map[string]string{}
	for _, k := range []string{"name", "full_times", "incremental", "retention_days", "retention_count", "time_zone"} {
		form[k] = strings.TrimSpace(r.PostFormValue(k))
	}
	members := r.PostForm["member"]
	g := api.Group{Name: form["name"], TimeZone: form["time_zone"], Incremental: form["incremental"], Members: members}
	off := r.PostFormValue("offline_fallback") == "on"
	g.OfflineFallback = &off
	for _, t := range strings.FieldsFunc(form["full_times"], func(r rune) bool { return r == ',' || r == ' ' }) {
		g.FullTimes = append(g.FullTimes, t)
	}
	var formErr string
	if form["retention_days"] != "" {
		n, err := strconv.Atoi(form["retention_days"])
		if err != nil {
			formErr = "retention days must be a whole number"
		}
		g.RetentionDays = n
	}
	if form["retention_count"] != "" {
		n, err := strconv.Atoi(form["retention_count"])
		if err != nil {
			formErr = "points to keep must be a whole number"
		}
		g.RetentionCount = n
	}
	if formErr == "" && len(members) == 0 {
		formErr = "choose at least one VM to protect"
	}
	var out api.Group
	if formErr == "" {
		if err := c.call(r, s, http.MethodPost, api.Prefix+"/groups", g, &out); err != nil {
			if unauthorized(err) {
				c.expired(w, r)
				return
			}
			formErr = errText(err)
		}
	}
	if formErr != "" {
		f := &fetcher{c: c, r: r, s: s}
		checked := map[string]bool{}
		for _, m := range members {
			checked[m] = true
		}
		c.render(w, r, http.StatusUnprocessableEntity, "wizard", s, map[string]any{"Title": "New protection group",
			"Items": c.wizardItems(f, checked), "Form": form, "Error": formErr})
		return
	}
	c.setFlash(s, "ok", fmt.Sprintf("Group %s created with %s. Its first backups are queued; run it now to start at once.", out.Name, plural(len(out.Members), "VM")))
	http.Redirect(w, r, "/protection/"+url.PathEscape(out.Name), http.StatusSeeOther)
}

// missing answers a page whose subject could not be fetched: the login
// page when the session has expired, else a not-found page saying why,
// with a way back.
func (c *Console) missing(w http.ResponseWriter, r *http.Request, s *session, f *fetcher, title, msg, back, backText string) {
	if unauthorized(f.err) {
		c.expired(w, r)
		return
	}
	c.render(w, r, http.StatusNotFound, "error", s, map[string]any{"Title": title, "Error": msg, "Back": back, "BackText": backText})
}

func (c *Console) groupPage(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.PathValue("group")
	f := &fetcher{c: c, r: r, s: s}
	var g api.Group
	if !f.get(api.Prefix+"/groups/"+url.PathEscape(name), &g) {
		c.missing(w, r, s, f, "Protection group", f.errString(), "/protection", "Back to protection groups")
		return
	}
	var vms []catalog.VMStatus
	var jobs []catalog.Job
	f.get(api.Prefix+"/vms", &vms)
	f.get(api.Prefix+"/jobs?group="+url.QueryEscape(g.Name)+"&limit=20", &jobs)
	var members []vmView
	var candidates []catalog.VMStatus
	for _, v := range vms {
		if v.GroupID == g.ID {
			members = append(members, protection(v, g, c.opt.Now()))
		} else if !v.Protected() {
			candidates = append(candidates, v)
		}
	}
	c.render(w, r, http.StatusOK, "group", s, map[string]any{"Title": "Group " + g.Name, "Group": g, "Members": members,
		"Candidates": candidates, "Jobs": jobs, "Error": f.errString()})
}

func (c *Console) addMembers(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.PathValue("group")
	members := r.PostForm["member"]
	if len(members) == 0 {
		c.setFlash(s, "warn", "Choose at least one VM to add.")
	} else if err := c.call(r, s, http.MethodPost, api.Prefix+"/groups/"+url.PathEscape(name)+"/members", api.Members{Members: members}, nil); err != nil {
		c.setFlash(s, "bad", "Not added: "+errText(err))
	} else {
		c.setFlash(s, "ok", fmt.Sprintf("Added %s to %s.", strings.Join(members, ", "), name))
	}
	http.Redirect(w, r, "/protection/"+url.PathEscape(name), http.StatusSeeOther)
}

func (c *Console) removeMember(w http.ResponseWriter, r *http.Request, s *session) {
	name, vm := r.PathValue("group"), r.PathValue("vm")
	if err := c.call(r, s, http.MethodDelete, api.Prefix+"/groups/"+url.PathEscape(name)+"/members/"+url.PathEscape(vm), nil, nil); err != nil {
		c.setFlash(s, "bad", "Not removed: "+errText(err))
	} else {
		c.setFlash(s, "ok", fmt.Sprintf("%s is no longer protected by %s; its points stay.", vm, name))
	}
	http.Redirect(w, r, "/protection/"+url.PathEscape(name), http.StatusSeeOther)
}

// groupSettings saves the settings form: every field is sent, so the
// group ends up exactly as the form shows it.
func (c *Console) groupSettings(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.PathValue("group")
	f := r.PostForm
	var u api.GroupUpdate
	full := []string{}
	for _, t := range strings.Split(f.Get("full"), ",") {
		if t = strings.TrimSpace(t); t != "" {
			full = append(full, t)
		}
	}
	tz, inc := strings.TrimSpace(f.Get("time_zone")), strings.TrimSpace(f.Get("incremental"))
	u.FullTimes, u.TimeZone, u.Incremental = &full, &tz, &inc
	for key, dst := range map[string]**int{"retention_days": &u.RetentionDays, "retention_count": &u.RetentionCount} {
		n, err := strconv.Atoi(firstNonEmpty(strings.TrimSpace(f.Get(key)), "0"))
		if err != nil || n < 0 {
			c.setFlash(s, "bad", fmt.Sprintf("Not saved: %s must be a whole number.", strings.ReplaceAll(key, "_", " ")))
			http.Redirect(w, r, "/protection/"+url.PathEscape(name), http.StatusSeeOther)
			return
		}
		*dst = &n
	}
	off, vb := f.Get("offline_fallback") == "on", f.Get("verify_boot") == "on"
	u.OfflineFallback, u.VerifyBoot = &off, &vb
	if err := c.call(r, s, http.MethodPatch, api.Prefix+"/groups/"+url.PathEscape(name), u, nil); err != nil {
		c.setFlash(s, "bad", "Not saved: "+errText(err))
	} else {
		c.setFlash(s, "ok", "Settings of "+name+" saved.")
	}
	http.Redirect(w, r, "/protection/"+url.PathEscape(name), http.StatusSeeOther)
}

func firstNonEmpty(a ...string) string {
	for _, s := range a {
		if s != "" {
			return s
		}
	}
	return ""
}

func (c *Console) runGroup(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.PathValue("group")
	var rr api.RunResponse
	if err := c.call(r, s, http.MethodPost, api.Prefix+"/groups/"+url.PathEscape(name)+"/run", nil, &rr); err != nil {
		c.setFlash(s, "bad", "Not run: "+errText(err))
		http.Redirect(w, r, "/protection/"+url.PathEscape(name), http.StatusSeeOther)
		return
	}
	if len(rr.Jobs) == 0 {
		// Every member already has a backup queued or running: show it.
		var busy []catalog.Job
		c.call(r, s, http.MethodGet, api.Prefix+"/jobs?kind=backup&state=queued&state=running&group="+url.QueryEscape(name), nil, &busy)
		if len(busy) == 1 {
			c.setFlash(s, "ok", fmt.Sprintf("A backup of %s was already queued or running: job %d.", busy[0].VMName, busy[0].ID))
			http.Redirect(w, r, "/jobs/"+strconv.FormatInt(busy[0].ID, 10), http.StatusSeeOther)
			return
		}
		c.setFlash(s, "ok", "Every member of "+name+" already has a backup queued or running.")
		http.Redirect(w, r, "/jobs?kind=backup", http.StatusSeeOther)
		return
	}
	if len(rr.Jobs) == 1 {
		c.setFlash(s, "ok", fmt.Sprintf("Backup job %d queued.", rr.Jobs[0].ID))
		http.Redirect(w, r, "/jobs/"+strconv.FormatInt(rr.Jobs[0].ID, 10), http.StatusSeeOther)
		return
	}
	c.setFlash(s, "ok", fmt.Sprintf("%d backup jobs queued.", len(rr.Jobs)))
	http.Redirect(w, r, "/jobs", http.StatusSeeOther)
}

func (c *Console) backupNow(w http.ResponseWriter, r *http.Request, s *session) {
	vm := r.PostFormValue("vm")
	var rr api.RunResponse
	if err := c.call(r, s, http.MethodPost, api.Prefix+"/backups", api.BackupRequest{VM: vm}, &rr); err != nil || len(rr.Jobs) == 0 {
		msg := "no job made"
		if err != nil {
			msg = errText(err)
		}
		c.setFlash(s, "bad", "Backup of "+vm+" not started: "+msg)
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	c.setFlash(s, "ok", fmt.Sprintf("Backup job %d of %s queued.", rr.Jobs[0].ID, vm))
	http.Redirect(w, r, "/jobs/"+strconv.FormatInt(rr.Jobs[0].ID, 10), http.StatusSeeOther)
}

// ---- recovery --------------------------------------------------------------------

type calDay struct {
	Day     int
	Date    string
	Points  int
	InMonth bool
	Today   bool
	Chosen  bool
}

type calendar struct {
	Month      string // "November 2026"
	Prev, Next string // "2026-10"
	Weeks      [][]calDay
}

// monthGrid lays out a month (weeks from Monday) with each day's count
// of points.
func monthGrid(month time.Time, counts map[string]int, chosen string, now time.Time) calendar {
	first := time.Date(month.Year(), month.Month(), 1, 0, 0, 0, 0, time.UTC)
	cal := calendar{Month: first.Format("January 2006"), Prev: first.AddDate(0, -1, 0).Format("2006-01"), Next: first.AddDate(0, 1, 0).Format("2006-01")}
	start := first.AddDate(0, 0, -((int(first.Weekday()) + 6) % 7))
	for d := start; ; {
		var week []calDay
		for i := 0; i < 7; i++ {
			key := d.Format("2006-01-02")
			week = append(week, calDay{Day: d.Day(), Date: key, Points: counts[key], InMonth: d.Month() == first.Month(),
				Today: key == now.UTC().Format("2006-01-02"), Chosen: key == chosen})
			d = d.AddDate(0, 0, 1)
		}
		cal.Weeks = append(cal.Weeks, week)
		if d.Month() != first.Month() {
			break
		}
	}
	return cal
}

type vmChoice struct {
	Name, State, Owner string
	Points             int
	Deleted            bool
}

func (c *Console) recovery(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	f := &fetcher{c: c, r: r, s: s}
	var vms []catalog.VMStatus
	var names []catalog.PointName
	f.get(api.Prefix+"/vms", &vms)
	f.get(api.Prefix+"/point-names", &names)
	if unauthorized(f.err) {
		c.expired(w, r)
		return
	}
	// A VM deleted from its host is recoverable as long as it has points:
	// the choice lists every name that has them.
	choices := map[string]*vmChoice{}
	for _, v := range vms {
		choices[v.Name] = &vmChoice{Name: v.Name, State: v.State, Owner: v.OwnerName}
	}
	for _, n := range names {
		ch := choices[n.Name]
		if ch == nil {
			ch = &vmChoice{Name: n.Name, Deleted: true, State: "not on any host"}
			choices[n.Name] = ch
		}
		ch.Points = int(n.Points)
	}
	search := strings.TrimSpace(q.Get("q"))
	var list []vmChoice
	for _, ch := range choices {
		if search == "" || strings.Contains(strings.ToLower(ch.Name), strings.ToLower(search)) {
			list = append(list, *ch)
		}
	}
	// VMs with points first: those are the ones that can be recovered.
	sort.Slice(list, func(i, j int) bool {
		if (list[i].Points > 0) != (list[j].Points > 0) {
			return list[i].Points > 0
		}
		return list[i].Name < list[j].Name
	})
	data := map[string]any{"Title": "Recovery", "VMs": list, "Search": search}
	vm := q.Get("vm")
	if vm == "" && len(list) == 1 && search != "" {
		vm = list[0].Name
	}
	if id := q.Get("point"); vm == "" && id != "" {
		var p catalog.Point
		if f.get(api.Prefix+"/points/"+url.PathEscape(id), &p) {
			vm = p.Name
		}
	}
	if ch := choices[vm]; ch != nil {
		data["VM"] = ch
		var pts []catalog.Point
		f.get(api.Prefix+"/points?limit=100000&name="+url.QueryEscape(vm), &pts)
		sort.Slice(pts, func(i, j int) bool { return pts[i].Time.After(pts[j].Time) })
		counts := map[string]int{}
		for _, p := range pts {
			counts[p.Time.UTC().Format("2006-01-02")]++
		}
		now := c.opt.Now()
		month := now
		if len(pts) > 0 {
			month = pts[0].Time
		}
		if m, err := time.Parse("2006-01", q.Get("month")); err == nil {
			month = m
		}
		day := q.Get("day")
		var detail api.PointDetail
		var point catalog.Point
		if id := q.Get("point"); id != "" {
			if f.get(api.Prefix+"/points/"+url.PathEscape(id), &detail) && detail.Name == vm {
				point = detail.Point
				day = point.Time.UTC().Format("2006-01-02")
				if q.Get("month") == "" {
					month = point.Time
				}
			} else {
				point = catalog.Point{}
			}
		}
		if day == "" && len(pts) > 0 && q.Get("month") == "" {
			day = pts[0].Time.UTC().Format("2006-01-02")
		}
		var dayPoints []catalog.Point
		for _, p := range pts {
			if p.Time.UTC().Format("2006-01-02") == day {
				dayPoints = append(dayPoints, p)
			}
		}
		data["Calendar"] = monthGrid(month, counts, day, now)
		data["Day"], data["DayPoints"], data["PointCount"] = day, dayPoints, len(pts)
		if point.ID != "" {
			data["Point"] = point
			data["Verdict"] = detail.VerifyBoot
			var segs []catalog.TapeSegment
			var tapes []tapeCartridge
			if f.get(api.Prefix+"/tapes", &tapes) {
				for _, t := range tapes {
					for _, sg := range t.Segments {
						if sg.PointID == point.ID {
							segs = append(segs, sg)
						}
					}
				}
			}
			data["Tape"] = segs
			var nodes []catalog.Node
			f.get(api.Prefix+"/agents", &nodes)
			var targets []nodeView
			for _, n := range nodes {
				if n.State == catalog.NodeEnrolled {
					nv := nodeView{Node: n}
					nv.Health, nv.HealthClass = nodeHealth(n, now)
					targets = append(targets, nv)
				}
			}
			data["Targets"] = targets
		}
	}
	data["Error"] = f.errString()
	c.render(w, r, http.StatusOK, "recovery", s, data)
}

// tapeCartridge is an entry of GET /api/v1/tapes.
type tapeCartridge struct {
	catalog.Cartridge
	Segments []catalog.TapeSegment `json:"segments"`
}

// crumb is one step of the item browser's path.
type crumb struct{ Name, Path string }

func (c *Console) items(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	point := q.Get("point")
	f := &fetcher{c: c, r: r, s: s}
	var p catalog.Point
	if !f.get(api.Prefix+"/points/"+url.PathEscape(point), &p) {
		c.missing(w, r, s, f, "Files of a point", f.errString(), "/recovery", "Back to Recovery")
		return
	}
	data := map[string]any{"Title": "Files of " + p.Name, "Point": p}
	base := url.Values{"point": {p.ID}}
	if q.Get("volume") == "" {
		var list api.ItemList
		f.get(api.Prefix+"/points/"+url.PathEscape(p.ID)+"/items", &list)
		data["Volumes"] = list.Volumes
	} else {
		disk, vol, dir := q.Get("disk"), q.Get("volume"), q.Get("path")
		if dir == "" {
			dir = "/"
		}
		v := url.Values{"disk": {disk}, "volume": {vol}, "path": {dir}}
		var list api.ItemList
		f.get(api.Prefix+"/points/"+url.PathEscape(p.ID)+"/items?"+v.Encode(), &list)
		sort.SliceStable(list.Entries, func(i, j int) bool {
			if list.Entries[i].IsDir != list.Entries[j].IsDir {
				return list.Entries[i].IsDir
			}
			return list.Entries[i].Name < list.Entries[j].Name
		})
		type entryView struct {
			api.ItemEntry
			Open, Download string
		}
		var ents []entryView
		for _, e := range list.Entries {
			ev := entryView{ItemEntry: e}
			ev.Open = "/recovery/items?" + url.Values{"point": {p.ID}, "disk": {disk}, "volume": {vol}, "path": {e.Path}}.Encode()
			ev.Download = apiPrefix + "points/" + url.PathEscape(p.ID) + "/items/download?" + url.Values{"disk": {disk}, "volume": {vol}, "path": {e.Path}}.Encode()
			ents = append(ents, ev)
		}
		crumbs := []crumb{{Name: "volume " + vol, Path: "/recovery/items?" + url.Values{"point": {p.ID}, "disk": {disk}, "volume": {vol}}.Encode()}}
		acc := ""
		for _, part := range strings.Split(strings.Trim(dir, "/"), "/") {
			if part == "" {
				continue
			}
			acc += "/" + part
			crumbs = append(crumbs, crumb{Name: part, Path: "/recovery/items?" + url.Values{"point": {p.ID}, "disk": {disk}, "volume": {vol}, "path": {acc}}.Encode()})
		}
		data["Dir"], data["Disk"], data["Volume"], data["Entries"], data["Crumbs"] = dir, disk, vol, ents, crumbs
		data["DownloadDir"] = apiPrefix + "points/" + url.PathEscape(p.ID) + "/items/download?" + v.Encode()
	}
	data["Base"] = "/recovery/items?" + base.Encode()
	data["Error"] = f.errString()
	c.render(w, r, http.StatusOK, "items", s, data)
}

// ---- jobs, tapes, alerts -------------------------------------------------------------

func (c *Console) jobs(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	v := url.Values{"limit": {"100"}}
	for _, k := range []string{"state", "kind"} {
		if x := q.Get(k); x != "" {
			v.Set(k, x)
		}
	}
	f := &fetcher{c: c, r: r, s: s}
	var jobs []catalog.Job
	f.get(api.Prefix+"/jobs?"+v.Encode(), &jobs)
	if unauthorized(f.err) {
		c.expired(w, r)
		return
	}
	active := false
	for _, j := range jobs {
		if !j.Done() {
			active = true
		}
	}
	c.render(w, r, http.StatusOK, "jobs", s, map[string]any{"Title": "Jobs", "Jobs": jobs, "Active": active,
		"State": q.Get("state"), "Kind": q.Get("kind"), "Error": f.errString()})
}

func (c *Console) job(w http.ResponseWriter, r *http.Request, s *session) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	f := &fetcher{c: c, r: r, s: s}
	var d api.JobDetail
	if err != nil || id <= 0 || !f.get(api.Prefix+"/jobs/"+strconv.FormatInt(id, 10), &d) {
		msg := f.errString()
		if msg == "" {
			msg = fmt.Sprintf("%q is not a job number", r.PathValue("id"))
		}
		c.missing(w, r, s, f, "Job", msg, "/jobs", "All jobs")
		return
	}
	next, link, linkText := nextStep(d.Job)
	c.render(w, r, http.StatusOK, "job", s, map[string]any{"Title": fmt.Sprintf("Job %d", d.ID), "Job": d, "Done": d.Done(),
		"Next": next, "NextLink": link, "NextLinkText": linkText,
		"Params": prettyJSON(d.Params), "Result": prettyJSON(d.Result)})
}

// nextStep says what a finished job leaves the operator to do.
func nextStep(j catalog.Job) (text, link, linkText string) {
	switch {
	case !j.Done():
		return "", "", ""
	case j.State == catalog.JobCanceled:
		return "Canceled. Nothing more runs for this job.", "/jobs", "All jobs"
	case j.State == catalog.JobFailed:
		return "Failed: the log below says why. Fix the cause and start it again.", "/jobs?state=failed", "Other failed jobs"
	}
	switch j.Kind {
	case catalog.KindBackup:
		return "Done: a new recovery point of " + j.VMName + ".", "/recovery?vm=" + url.QueryEscape(j.VMName), "See its recovery points"
	case catalog.KindRecovery:
		var res api.RecoveryResult
		if json.Unmarshal(j.Result, &res) == nil && res.Plan.Method != "" {
			switch {
			case res.Plan.Method == "folder":
				return fmt.Sprintf("Done: the files are in %s on %s.", res.Plan.Dir, res.Plan.Node), "/", "Overview"
			case res.Running:
				return fmt.Sprintf("Done: VM %s runs on %s.", res.VM, res.Plan.Node), "/", "See it in the overview"
			default:
				return fmt.Sprintf("Done: VM %s is defined on %s (not started).", res.VM, res.Plan.Node), "/", "See it in the overview"
			}
		}
	}
	return "Done.", "/jobs", "All jobs"
}

func prettyJSON(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return string(raw)
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

func (c *Console) cancelJob(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if _, err := strconv.ParseInt(id, 10, 64); err != nil {
		http.Error(w, "bad job number", http.StatusBadRequest)
		return
	}
	if err := c.call(r, s, http.MethodPost, api.Prefix+"/jobs/"+id+"/cancel", nil, nil); err != nil {
		c.setFlash(s, "bad", "Not canceled: "+errText(err))
	} else {
		c.setFlash(s, "ok", "Cancel requested; a running job stops at its next progress report.")
	}
	http.Redirect(w, r, "/jobs/"+id, http.StatusSeeOther)
}

type libraryView struct {
	Name       string
	Cartridges []tapeCartridge
	Used, Cap  int64
}

func (c *Console) tapes(w http.ResponseWriter, r *http.Request, s *session) {
	f := &fetcher{c: c, r: r, s: s}
	var tapes []tapeCartridge
	f.get(api.Prefix+"/tapes", &tapes)
	if unauthorized(f.err) {
		c.expired(w, r)
		return
	}
	var libs []*libraryView
	byName := map[string]*libraryView{}
	for _, t := range tapes {
		l := byName[t.Library]
		if l == nil {
			l = &libraryView{Name: t.Library}
			byName[t.Library] = l
			libs = append(libs, l)
		}
		l.Cartridges = append(l.Cartridges, t)
		l.Used += t.Used
		l.Cap += t.Capacity
	}
	c.render(w, r, http.StatusOK, "tapes", s, map[string]any{"Title": "Tapes", "Libraries": libs, "Error": f.errString()})
}

func (c *Console) alerts(w http.ResponseWriter, r *http.Request, s *session) {
	f := &fetcher{c: c, r: r, s: s}
	var alerts []catalog.Alert
	all := r.URL.Query().Get("all") == "1"
	path := api.Prefix + "/alerts?open=true&limit=500"
	if all {
		path = api.Prefix + "/alerts?limit=500"
	}
	f.get(path, &alerts)
	if unauthorized(f.err) {
		c.expired(w, r)
		return
	}
	c.render(w, r, http.StatusOK, "alerts", s, map[string]any{"Title": "Alerts", "Alerts": alerts, "All": all, "Error": f.errString()})
}

func (c *Console) ackAlert(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if _, err := strconv.ParseInt(id, 10, 64); err != nil {
		http.Error(w, "bad alert number", http.StatusBadRequest)
		return
	}
	if err := c.call(r, s, http.MethodPost, api.Prefix+"/alerts/"+id+"/ack", nil, nil); err != nil {
		c.setFlash(s, "bad", "Not acknowledged: "+errText(err))
	} else {
		c.setFlash(s, "ok", "Alert "+id+" acknowledged.")
	}
	http.Redirect(w, r, "/alerts", http.StatusSeeOther)
}

func (c *Console) notFound(w http.ResponseWriter, r *http.Request, s *session) {
	c.render(w, r, http.StatusNotFound, "error", s, map[string]any{"Title": "Not found",
		"Error": "No console page at " + r.URL.Path, "Back": "/", "BackText": "Overview"})
}

// ---- rendering ---------------------------------------------------------------------

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, s *session, data map[string]any) {
	t := c.pages[name]
	if data == nil {
		data = map[string]any{}
	}
	data["Version"] = c.opt.Version
	data["Page"] = name
	data["Path"] = r.URL.Path
	if s != nil {
		data["CSRF"] = s.csrf
		data["LoggedIn"] = true
		if k, m := c.takeFlash(s); m != "" {
			data["Flash"], data["FlashKind"] = m, k
		}
	}
	var buf strings.Builder
	if err := t.ExecuteTemplate(&buf, "layout", data); err != nil {
		c.opt.Log.Error("console: render", "page", name, "err", err)
		http.Error(w, "the console could not draw this page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprint(w, buf.String())
}
