package catalog

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// ---- VMs -------------------------------------------------------------------

// VM states as the catalog knows them. Agents report the hypervisor's
// state; "absent" is set by the catalog for a VM its owner stopped
// reporting.
const (
	VMRunning   = "running"
	VMOff       = "off"
	VMSaved     = "saved"
	VMPaused    = "paused"
	VMMigrating = "migrating"
	VMAbsent    = "absent"
	VMUnknown   = "unknown"
)

// VM is a virtual machine as last reported.
type VM struct {
	ID          int64     `json:"id"`
	UUID        string    `json:"uuid"`
	Name        string    `json:"name"`
	ClusterID   int64     `json:"cluster_id,omitempty"`
	OwnerNodeID int64     `json:"owner_node_id,omitempty"`
	VolumeID    string    `json:"volume_id,omitempty"`
	Path        string    `json:"path,omitempty"`
	State       string    `json:"state"`
	LastSeen    time.Time `json:"last_seen"`
}

// VMReport is one VM in a node's inventory report.
type VMReport struct {
	UUID     string `json:"uuid"`
	Name     string `json:"name"`
	VolumeID string `json:"volume_id,omitempty"`
	Path     string `json:"path,omitempty"`
	State    string `json:"state"`
}

const vmCols = `v.id, v.uuid, v.name, v.cluster_id, v.owner_node_id, v.volume_id, v.path, v.state, v.last_seen`

func (v *VM) scanArgs(cluster, owner, seen *sql.NullInt64) []any {
	return []any{&v.ID, &v.UUID, &v.Name, cluster, owner, &v.VolumeID, &v.Path, &v.State, seen}
}

func scanVM(s interface{ Scan(...any) error }) (VM, error) {
	var v VM
	var cluster, owner, seen sql.NullInt64
	err := s.Scan(v.scanArgs(&cluster, &owner, &seen)...)
	v.ClusterID, v.OwnerNodeID, v.LastSeen = cluster.Int64, owner.Int64, nt(seen)
	return v, err
}

// ReportInventory records a node's full inventory in one transaction. A VM
// is keyed by UUID, so a VM that moved keeps its row and its protection:
// the reporting node becomes its owner unless the VM is recorded running
// on another node and this report does not say it runs here (a stopped
// copy defined on several hosts). VMs the node owned and no longer reports
// become "absent".
func (c *Catalog) ReportInventory(ctx context.Context, nodeID int64, vms []VMReport) error {
	for _, r := range vms {
		if r.UUID == "" || r.Name == "" {
			return fmt.Errorf("catalog: inventory of node %d: %w: VM without UUID or name", nodeID, ErrInvalid)
		}
	}
	now := c.now().UnixNano()
	err := c.tx(ctx, func(tx *Tx) error {
		var cluster sql.NullInt64
		if err := tx.QueryRow(ctx, `SELECT cluster_id FROM nodes WHERE id = ?`, nodeID).Scan(&cluster); err != nil {
			return err
		}
		for _, r := range vms {
			st := r.State
			if st == "" {
				st = VMUnknown
			}
			if _, err := tx.Exec(ctx, `INSERT INTO vms (uuid, name, cluster_id, owner_node_id, volume_id, path, state, last_seen)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (uuid) DO UPDATE SET
					name = excluded.name, cluster_id = excluded.cluster_id, owner_node_id = excluded.owner_node_id,
					volume_id = excluded.volume_id, path = excluded.path, state = excluded.state, last_seen = excluded.last_seen
				WHERE excluded.state = 'running' OR vms.state <> 'running'
					OR vms.owner_node_id IS NULL OR vms.owner_node_id = excluded.owner_node_id`,
				r.UUID, r.Name, cluster, nodeID, r.VolumeID, r.Path, st, now); err != nil {
				return fmt.Errorf("VM %s: %w", r.Name, err)
			}
		}
		_, err := tx.Exec(ctx, `UPDATE vms SET state = 'absent' WHERE owner_node_id = ? AND last_seen < ? AND state <> 'absent'`, nodeID, now)
		return err
	})
	return wrap(err, "inventory of node %d", nodeID)
}

// GetVM reads a VM by ID.
func (c *Catalog) GetVM(ctx context.Context, id int64) (VM, error) {
	v, err := scanVM(c.queryRow(ctx, `SELECT `+vmCols+` FROM vms v WHERE v.id = ?`, id))
	return v, wrap(err, "get VM %d", id)
}

// VMByUUID reads a VM by its hypervisor UUID.
func (c *Catalog) VMByUUID(ctx context.Context, uuid string) (VM, error) {
	v, err := scanVM(c.queryRow(ctx, `SELECT `+vmCols+` FROM vms v WHERE v.uuid = ?`, uuid))
	return v, wrap(err, "get VM %s", uuid)
}

// VMsByName lists the VMs of a name (normally one; names may repeat across
// clusters).
func (c *Catalog) VMsByName(ctx context.Context, name string) ([]VM, error) {
	rows, err := c.query(ctx, `SELECT `+vmCols+` FROM vms v WHERE v.name = ? ORDER BY v.id`, name)
	if err != nil {
		return nil, wrap(err, "get VM %q", name)
	}
	defer rows.Close()
	var out []VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, wrap(err, "get VM %q", name)
		}
		out = append(out, v)
	}
	return out, wrap(rows.Err(), "get VM %q", name)
}

// SetVMState changes a VM's state (the server marks one "migrating" when
// the HA manager says it moves).
func (c *Catalog) SetVMState(ctx context.Context, id int64, state string) error {
	res, err := c.exec(ctx, `UPDATE vms SET state = ? WHERE id = ?`, state, id)
	if err != nil {
		return wrap(err, "set state of VM %d", id)
	}
	if affected(res) == 0 {
		return fmt.Errorf("catalog: set state of VM %d: %w", id, ErrNotFound)
	}
	return nil
}

// DeleteVM forgets a VM; its jobs keep their vm_name.
func (c *Catalog) DeleteVM(ctx context.Context, id int64) error {
	return c.deleteByID(ctx, "vms", "VM", id)
}

// VMStatus is a VM with its protection state.
type VMStatus struct {
	VM
	OwnerName string `json:"owner_name,omitempty"`
	GroupID   int64  `json:"group_id,omitempty"`
	GroupName string `json:"group_name,omitempty"`
	// LastPoint is the newest point of the VM's name; Points counts them.
	LastPoint time.Time `json:"last_point,omitzero"`
	Points    int64     `json:"points"`
	// LastBackupJob and its state: the newest backup job of the VM.
	LastBackupJob   int64  `json:"last_backup_job,omitempty"`
	LastBackupState string `json:"last_backup_state,omitempty"`
}

// Protected reports whether the VM is a member of a protection group.
func (s *VMStatus) Protected() bool { return s.GroupID != 0 }

// VMFilter narrows ListVMs; zero fields match everything.
type VMFilter struct {
	ClusterID   int64
	OwnerNodeID int64
	VolumeID    string
	Name        string
	GroupID     int64
	// Unprotected keeps VMs in no protection group.
	Unprotected bool
}

// ListVMs lists VMs with their owner's name, group, newest point and newest
// backup job, ordered by name. Each per-VM figure is an index lookup
// (points by name and time, jobs by VM and ID).
func (c *Catalog) ListVMs(ctx context.Context, f VMFilter) ([]VMStatus, error) {
	var where []string
	var args []any
	if f.ClusterID != 0 {
		where, args = append(where, "v.cluster_id = ?"), append(args, f.ClusterID)
	}
	if f.OwnerNodeID != 0 {
		where, args = append(where, "v.owner_node_id = ?"), append(args, f.OwnerNodeID)
	}
	if f.VolumeID != "" {
		where, args = append(where, "v.volume_id = ?"), append(args, f.VolumeID)
	}
	if f.Name != "" {
		where, args = append(where, "v.name = ?"), append(args, f.Name)
	}
	if f.GroupID != 0 {
		where, args = append(where, "m.group_id = ?"), append(args, f.GroupID)
	}
	if f.Unprotected {
		where = append(where, "m.group_id IS NULL")
	}
	q := `SELECT ` + vmCols + `, COALESCE(n.name, ''), m.group_id, COALESCE(g.name, ''),
		(SELECT MAX(p.taken_at) FROM points p WHERE p.name = v.name),
		(SELECT COUNT(*) FROM points p WHERE p.name = v.name),
		j.id, COALESCE(j.state, '')
		FROM vms v
		LEFT JOIN nodes n ON n.id = v.owner_node_id
		LEFT JOIN group_members m ON m.vm_name = v.name
		LEFT JOIN protection_groups g ON g.id = m.group_id
		LEFT JOIN jobs j ON j.id = (SELECT MAX(j2.id) FROM jobs j2 WHERE j2.vm_id = v.id AND j2.kind = 'backup')`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY v.name, v.id"
	rows, err := c.query(ctx, q, args...)
	if err != nil {
		return nil, wrap(err, "list VMs")
	}
	defer rows.Close()
	var out []VMStatus
	for rows.Next() {
		var s VMStatus
		var cluster, owner, seen, group, last, job sql.NullInt64
		a := append(s.scanArgs(&cluster, &owner, &seen), &s.OwnerName, &group, &s.GroupName, &last, &s.Points, &job, &s.LastBackupState)
		if err := rows.Scan(a...); err != nil {
			return nil, wrap(err, "list VMs")
		}
		s.ClusterID, s.OwnerNodeID, s.LastSeen = cluster.Int64, owner.Int64, nt(seen)
		s.GroupID, s.LastPoint, s.LastBackupJob = group.Int64, nt(last), job.Int64
		out = append(out, s)
	}
	return out, wrap(rows.Err(), "list VMs")
}

// ---- protection groups -----------------------------------------------------

// Group is a protection group: VMs by name, a schedule and a retention.
type Group struct {
	ID   int64  `json:"id"`
	Name string `json:"name"`
	// FullTimes are the times of day ("HH:MM", in TimeZone) of full-read
	// points.
	FullTimes []string `json:"full_times"`
	TimeZone  string   `json:"time_zone"`
	// Incremental is the interval of incremental points: 0 (none) or 15
	// minutes to 24 hours.
	Incremental    time.Duration `json:"incremental"`
	RetentionDays  int           `json:"retention_days"`
	RetentionCount int           `json:"retention_count"`
	// OfflineFallback allows an offline (saved-state) backup when an
	// online one is impossible; online is always preferred.
	OfflineFallback bool `json:"offline_fallback"`
	// VerifyBoot queues a verify-boot of each new point of a member on
	// the node that took it, once the point is recorded.
	VerifyBoot bool      `json:"verify_boot"`
	Members    []string  `json:"members"`
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
}

// Validate checks a group's schedule and retention.
func (g *Group) Validate() error {
	if g.Name == "" {
		return fmt.Errorf("%w: group name is empty", ErrInvalid)
	}
	for _, t := range g.FullTimes {
		if _, err := time.Parse("15:04", t); err != nil || len(t) != 5 {
			return fmt.Errorf("%w: group %s: full-read time %q is not HH:MM", ErrInvalid, g.Name, t)
		}
	}
	if g.TimeZone != "" {
		if _, err := time.LoadLocation(g.TimeZone); err != nil {
			return fmt.Errorf("%w: group %s: time zone %q: %v", ErrInvalid, g.Name, g.TimeZone, err)
		}
	}
	if g.Incremental != 0 && (g.Incremental < 15*time.Minute || g.Incremental > 24*time.Hour) {
		return fmt.Errorf("%w: group %s: incremental interval %s is outside 15m to 24h", ErrInvalid, g.Name, g.Incremental)
	}
	if g.RetentionDays < 0 || g.RetentionCount < 0 {
		return fmt.Errorf("%w: group %s: negative retention", ErrInvalid, g.Name)
	}
	for _, m := range g.Members {
		if m == "" {
			return fmt.Errorf("%w: group %s: empty member name", ErrInvalid, g.Name)
		}
	}
	return nil
}

const groupCols = `id, name, full_times, time_zone, incremental_seconds, retention_days, retention_count, offline_fallback, verify_boot, created_at, updated_at`

func scanGroup(s interface{ Scan(...any) error }) (Group, error) {
	var g Group
	var times string
	var inc int64
	var offline, verify int
	var created, updated sql.NullInt64
	err := s.Scan(&g.ID, &g.Name, &times, &g.TimeZone, &inc, &g.RetentionDays, &g.RetentionCount, &offline, &verify, &created, &updated)
	if times != "" {
		g.FullTimes = strings.Split(times, ",")
	}
	g.Incremental = time.Duration(inc) * time.Second
	g.OfflineFallback = offline != 0
	g.VerifyBoot = verify != 0
	g.Created, g.Updated = nt(created), nt(updated)
	return g, err
}

// CreateGroup adds a group and its members; a group name in use, or a
// member already in another group, is ErrConflict.
func (c *Catalog) CreateGroup(ctx context.Context, g Group) (Group, error) {
	if g.TimeZone == "" {
		g.TimeZone = "UTC"
	}
	if err := g.Validate(); err != nil {
		return g, fmt.Errorf("catalog: create group: %w", err)
	}
	now := c.now().UTC()
	g.Created, g.Updated = now, now
	err := c.tx(ctx, func(tx *Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO protection_groups (name, full_times, time_zone, incremental_seconds,
			retention_days, retention_count, offline_fallback, verify_boot, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			g.Name, strings.Join(g.FullTimes, ","), g.TimeZone, int64(g.Incremental/time.Second),
			g.RetentionDays, g.RetentionCount, b2i(g.OfflineFallback), b2i(g.VerifyBoot), tn(now), tn(now)).Scan(&g.ID); err != nil {
			return err
		}
		return addMembers(ctx, tx, g.ID, g.Members)
	})
	return g, wrap(err, "create group %q", g.Name)
}

func addMembers(ctx context.Context, tx *Tx, groupID int64, names []string) error {
	for _, n := range names {
		if _, err := tx.Exec(ctx, `INSERT INTO group_members (group_id, vm_name) VALUES (?, ?)`, groupID, n); err != nil {
			return fmt.Errorf("member %q: %w", n, err)
		}
	}
	return nil
}

// UpdateGroup replaces a group's name, schedule and retention (not its
// members).
func (c *Catalog) UpdateGroup(ctx context.Context, g Group) error {
	if g.TimeZone == "" {
		g.TimeZone = "UTC"
	}
	if err := g.Validate(); err != nil {
		return fmt.Errorf("catalog: update group: %w", err)
	}
	res, err := c.exec(ctx, `UPDATE protection_groups SET name = ?, full_times = ?, time_zone = ?, incremental_seconds = ?,
		retention_days = ?, retention_count = ?, offline_fallback = ?, verify_boot = ?, updated_at = ? WHERE id = ?`,
		g.Name, strings.Join(g.FullTimes, ","), g.TimeZone, int64(g.Incremental/time.Second),
		g.RetentionDays, g.RetentionCount, b2i(g.OfflineFallback), b2i(g.VerifyBoot), c.now().UnixNano(), g.ID)
	if err != nil {
		return wrap(err, "update group %d", g.ID)
	}
	if affected(res) == 0 {
		return fmt.Errorf("catalog: update group %d: %w", g.ID, ErrNotFound)
	}
	return nil
}

// AddGroupMembers adds VM names to a group; a name in another group (or
// already in this one) is ErrConflict and adds nothing.
func (c *Catalog) AddGroupMembers(ctx context.Context, groupID int64, names ...string) error {
	for _, n := range names {
		if n == "" {
			return fmt.Errorf("catalog: add members to group %d: %w: empty name", groupID, ErrInvalid)
		}
	}
	err := c.tx(ctx, func(tx *Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE protection_groups SET updated_at = ? WHERE id = ?`, c.now().UnixNano(), groupID); err != nil {
			return err
		}
		return addMembers(ctx, tx, groupID, names)
	})
	return wrap(err, "add members to group %d", groupID)
}

// RemoveGroupMember takes a VM name out of a group.
func (c *Catalog) RemoveGroupMember(ctx context.Context, groupID int64, name string) error {
	res, err := c.exec(ctx, `DELETE FROM group_members WHERE group_id = ? AND vm_name = ?`, groupID, name)
	if err != nil {
		return wrap(err, "remove %q from group %d", name, groupID)
	}
	if affected(res) == 0 {
		return fmt.Errorf("catalog: remove %q from group %d: %w", name, groupID, ErrNotFound)
	}
	return nil
}

// GetGroup reads a group with its members.
func (c *Catalog) GetGroup(ctx context.Context, id int64) (Group, error) {
	g, err := scanGroup(c.queryRow(ctx, `SELECT `+groupCols+` FROM protection_groups WHERE id = ?`, id))
	if err != nil {
		return g, wrap(err, "get group %d", id)
	}
	return g, c.fillMembers(ctx, []*Group{&g})
}

// GroupByName reads a group by name, with its members.
func (c *Catalog) GroupByName(ctx context.Context, name string) (Group, error) {
	g, err := scanGroup(c.queryRow(ctx, `SELECT `+groupCols+` FROM protection_groups WHERE name = ?`, name))
	if err != nil {
		return g, wrap(err, "get group %q", name)
	}
	return g, c.fillMembers(ctx, []*Group{&g})
}

// GroupOfVM finds the group a VM name belongs to.
func (c *Catalog) GroupOfVM(ctx context.Context, vmName string) (Group, error) {
	g, err := scanGroup(c.queryRow(ctx, `SELECT `+groupCols+` FROM protection_groups
		WHERE id = (SELECT group_id FROM group_members WHERE vm_name = ?)`, vmName))
	if err != nil {
		return g, wrap(err, "group of VM %q", vmName)
	}
	return g, c.fillMembers(ctx, []*Group{&g})
}

// ListGroups lists groups by name with their members.
func (c *Catalog) ListGroups(ctx context.Context) ([]Group, error) {
	rows, err := c.query(ctx, `SELECT `+groupCols+` FROM protection_groups ORDER BY name`)
	if err != nil {
		return nil, wrap(err, "list groups")
	}
	var gs []Group
	for rows.Next() {
		g, err := scanGroup(rows)
		if err != nil {
			rows.Close()
			return nil, wrap(err, "list groups")
		}
		gs = append(gs, g)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, wrap(err, "list groups")
	}
	ptrs := make([]*Group, len(gs))
	for i := range gs {
		ptrs[i] = &gs[i]
	}
	return gs, c.fillMembers(ctx, ptrs)
}

func (c *Catalog) fillMembers(ctx context.Context, gs []*Group) error {
	if len(gs) == 0 {
		return nil
	}
	byID := map[int64]*Group{}
	for _, g := range gs {
		byID[g.ID] = g
		g.Members = []string{}
	}
	q := `SELECT group_id, vm_name FROM group_members ORDER BY vm_name`
	var args []any
	if len(gs) == 1 {
		q, args = `SELECT group_id, vm_name FROM group_members WHERE group_id = ? ORDER BY vm_name`, []any{gs[0].ID}
	}
	rows, err := c.query(ctx, q, args...)
	if err != nil {
		return wrap(err, "list group members")
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			return wrap(err, "list group members")
		}
		if g := byID[id]; g != nil {
			g.Members = append(g.Members, name)
		}
	}
	return wrap(rows.Err(), "list group members")
}

// DeleteGroup removes a group and its memberships (its points stay).
func (c *Catalog) DeleteGroup(ctx context.Context, id int64) error {
	return c.deleteByID(ctx, "protection_groups", "group", id)
}
