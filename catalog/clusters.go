package catalog

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// ---- clusters --------------------------------------------------------------

// Cluster groups nodes that share volumes, with an optional HA manager
// ("" or "pacemaker").
type Cluster struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	HAManager string    `json:"ha_manager,omitempty"`
	Created   time.Time `json:"created"`
}

const clusterCols = `id, name, ha_manager, created_at`

func scanCluster(s interface{ Scan(...any) error }) (Cluster, error) {
	var cl Cluster
	var created sql.NullInt64
	err := s.Scan(&cl.ID, &cl.Name, &cl.HAManager, &created)
	cl.Created = nt(created)
	return cl, err
}

// CreateCluster adds a cluster; a name in use is ErrConflict.
func (c *Catalog) CreateCluster(ctx context.Context, cl Cluster) (Cluster, error) {
	if cl.Name == "" {
		return cl, fmt.Errorf("catalog: create cluster: %w: empty name", ErrInvalid)
	}
	cl.Created = c.now().UTC()
	err := c.retry(ctx, func() error {
		return c.w.QueryRowContext(ctx, c.rebind(`INSERT INTO clusters (name, ha_manager, created_at) VALUES (?, ?, ?) RETURNING id`),
			cl.Name, cl.HAManager, tn(cl.Created)).Scan(&cl.ID)
	})
	return cl, wrap(err, "create cluster %q", cl.Name)
}

// GetCluster reads a cluster by ID.
func (c *Catalog) GetCluster(ctx context.Context, id int64) (Cluster, error) {
	cl, err := scanCluster(c.queryRow(ctx, `SELECT `+clusterCols+` FROM clusters WHERE id = ?`, id))
	return cl, wrap(err, "get cluster %d", id)
}

// ClusterByName reads a cluster by name.
func (c *Catalog) ClusterByName(ctx context.Context, name string) (Cluster, error) {
	cl, err := scanCluster(c.queryRow(ctx, `SELECT `+clusterCols+` FROM clusters WHERE name = ?`, name))
	return cl, wrap(err, "get cluster %q", name)
}

// ListClusters lists clusters by name.
func (c *Catalog) ListClusters(ctx context.Context) ([]Cluster, error) {
	rows, err := c.query(ctx, `SELECT `+clusterCols+` FROM clusters ORDER BY name`)
	if err != nil {
		return nil, wrap(err, "list clusters")
	}
	defer rows.Close()
	var out []Cluster
	for rows.Next() {
		cl, err := scanCluster(rows)
		if err != nil {
			return nil, wrap(err, "list clusters")
		}
		out = append(out, cl)
	}
	return out, wrap(rows.Err(), "list clusters")
}

// UpdateCluster changes a cluster's name and HA manager.
func (c *Catalog) UpdateCluster(ctx context.Context, cl Cluster) error {
	res, err := c.exec(ctx, `UPDATE clusters SET name = ?, ha_manager = ? WHERE id = ?`, cl.Name, cl.HAManager, cl.ID)
	if err != nil {
		return wrap(err, "update cluster %d", cl.ID)
	}
	if affected(res) == 0 {
		return fmt.Errorf("catalog: update cluster %d: %w", cl.ID, ErrNotFound)
	}
	return nil
}

// DeleteCluster removes a cluster and its shared volumes; one that still
// has nodes is ErrConflict.
func (c *Catalog) DeleteCluster(ctx context.Context, id int64) error {
	return c.deleteByID(ctx, "clusters", "cluster", id)
}

func (c *Catalog) deleteByID(ctx context.Context, table, what string, id int64) error {
	res, err := c.exec(ctx, `DELETE FROM `+table+` WHERE id = ?`, id)
	if err != nil {
		return wrap(err, "delete %s %d", what, id)
	}
	if affected(res) == 0 {
		return fmt.Errorf("catalog: delete %s %d: %w", what, id, ErrNotFound)
	}
	return nil
}

// ---- shared volumes --------------------------------------------------------

// SharedVolume is a volume every node of a cluster sees at Path, with an
// ID the nodes agree on.
type SharedVolume struct {
	ID        int64  `json:"id"`
	ClusterID int64  `json:"cluster_id"`
	Path      string `json:"path"`
	VolumeID  string `json:"volume_id"`
}

// AddSharedVolume adds a volume to a cluster; a path or volume ID already
// in the cluster is ErrConflict, a missing cluster ErrNotFound.
func (c *Catalog) AddSharedVolume(ctx context.Context, v SharedVolume) (SharedVolume, error) {
	if v.Path == "" || v.VolumeID == "" {
		return v, fmt.Errorf("catalog: add shared volume: %w: path and volume ID are required", ErrInvalid)
	}
	err := c.retry(ctx, func() error {
		return c.w.QueryRowContext(ctx, c.rebind(`INSERT INTO shared_volumes (cluster_id, path, volume_id) VALUES (?, ?, ?) RETURNING id`),
			v.ClusterID, v.Path, v.VolumeID).Scan(&v.ID)
	})
	return v, wrap(err, "add shared volume %s", v.Path)
}

// ListSharedVolumes lists a cluster's volumes (all clusters' for 0).
func (c *Catalog) ListSharedVolumes(ctx context.Context, clusterID int64) ([]SharedVolume, error) {
	rows, err := c.query(ctx, `SELECT id, cluster_id, path, volume_id FROM shared_volumes
		WHERE (CAST(? AS BIGINT) = 0 OR cluster_id = ?) ORDER BY cluster_id, path`, clusterID, clusterID)
	if err != nil {
		return nil, wrap(err, "list shared volumes")
	}
	defer rows.Close()
	var out []SharedVolume
	for rows.Next() {
		var v SharedVolume
		if err := rows.Scan(&v.ID, &v.ClusterID, &v.Path, &v.VolumeID); err != nil {
			return nil, wrap(err, "list shared volumes")
		}
		out = append(out, v)
	}
	return out, wrap(rows.Err(), "list shared volumes")
}

// DeleteSharedVolume removes a volume.
func (c *Catalog) DeleteSharedVolume(ctx context.Context, id int64) error {
	return c.deleteByID(ctx, "shared_volumes", "shared volume", id)
}

// ---- nodes -----------------------------------------------------------------

// Node states.
const (
	NodeEnrolled = "enrolled"
	NodeRevoked  = "revoked"
)

// Node is a host running an agent.
type Node struct {
	ID              int64     `json:"id"`
	ClusterID       int64     `json:"cluster_id,omitempty"`
	Name            string    `json:"name"`
	Hostname        string    `json:"hostname"`
	CertFingerprint string    `json:"cert_fingerprint"`
	State           string    `json:"state"`
	Version         string    `json:"version,omitempty"`
	Enrolled        time.Time `json:"enrolled"`
	LastHeartbeat   time.Time `json:"last_heartbeat,omitzero"`
}

const nodeCols = `id, cluster_id, name, hostname, cert_fingerprint, state, version, enrolled_at, last_heartbeat`

func scanNode(s interface{ Scan(...any) error }) (Node, error) {
	var n Node
	var cluster, enrolled, hb sql.NullInt64
	err := s.Scan(&n.ID, &cluster, &n.Name, &n.Hostname, &n.CertFingerprint, &n.State, &n.Version, &enrolled, &hb)
	n.ClusterID, n.Enrolled, n.LastHeartbeat = cluster.Int64, nt(enrolled), nt(hb)
	return n, err
}

// AddNode adds (or, by name, replaces the identity of) a node without a
// token: for the server's own local agent and for tests. Agents enroll
// with EnrollNode.
func (c *Catalog) AddNode(ctx context.Context, n Node) (Node, error) {
	var out Node
	err := c.tx(ctx, func(tx *Tx) error {
		var err error
		out, err = c.upsertNode(ctx, tx, n)
		return err
	})
	return out, wrap(err, "add node %q", n.Name)
}

func (c *Catalog) upsertNode(ctx context.Context, tx *Tx, n Node) (Node, error) {
	if n.Name == "" {
		return n, fmt.Errorf("%w: node name is empty", ErrInvalid)
	}
	n.State = NodeEnrolled
	n.Enrolled = c.now().UTC()
	// Re-enrolling a name (a reinstalled host) replaces its certificate
	// and lifts a revocation: it needed a fresh token or an admin to do so.
	row := tx.QueryRow(ctx, `INSERT INTO nodes (cluster_id, name, hostname, cert_fingerprint, state, version, enrolled_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET
			cluster_id = COALESCE(excluded.cluster_id, nodes.cluster_id),
			hostname = excluded.hostname, cert_fingerprint = excluded.cert_fingerprint,
			state = excluded.state, version = excluded.version, enrolled_at = excluded.enrolled_at
		RETURNING `+nodeCols,
		ni(n.ClusterID), n.Name, n.Hostname, n.CertFingerprint, n.State, n.Version, tn(n.Enrolled))
	return scanNode(row)
}

// GetNode reads a node by ID.
func (c *Catalog) GetNode(ctx context.Context, id int64) (Node, error) {
	n, err := scanNode(c.queryRow(ctx, `SELECT `+nodeCols+` FROM nodes WHERE id = ?`, id))
	return n, wrap(err, "get node %d", id)
}

// NodeByName reads a node by name.
func (c *Catalog) NodeByName(ctx context.Context, name string) (Node, error) {
	n, err := scanNode(c.queryRow(ctx, `SELECT `+nodeCols+` FROM nodes WHERE name = ?`, name))
	return n, wrap(err, "get node %q", name)
}

// NodeByFingerprint finds the node a client certificate belongs to. The
// caller refuses the call unless State is NodeEnrolled.
func (c *Catalog) NodeByFingerprint(ctx context.Context, fp string) (Node, error) {
	if fp == "" {
		return Node{}, fmt.Errorf("catalog: get node by certificate: %w", ErrNotFound)
	}
	n, err := scanNode(c.queryRow(ctx, `SELECT `+nodeCols+` FROM nodes WHERE cert_fingerprint = ?`, fp))
	return n, wrap(err, "get node by certificate %s", fp)
}

// ListNodes lists nodes by name; clusterID > 0 keeps one cluster's.
func (c *Catalog) ListNodes(ctx context.Context, clusterID int64) ([]Node, error) {
	rows, err := c.query(ctx, `SELECT `+nodeCols+` FROM nodes WHERE (CAST(? AS BIGINT) = 0 OR cluster_id = ?) ORDER BY name`, clusterID, clusterID)
	if err != nil {
		return nil, wrap(err, "list nodes")
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, wrap(err, "list nodes")
		}
		out = append(out, n)
	}
	return out, wrap(rows.Err(), "list nodes")
}

// Heartbeat records that an enrolled node called in, with its version. A
// revoked node is ErrConflict.
func (c *Catalog) Heartbeat(ctx context.Context, id int64, version string) error {
	res, err := c.exec(ctx, `UPDATE nodes SET last_heartbeat = ?, version = ? WHERE id = ? AND state = 'enrolled'`,
		c.now().UnixNano(), version, id)
	if err != nil {
		return wrap(err, "heartbeat of node %d", id)
	}
	if affected(res) == 1 {
		return nil
	}
	n, err := c.GetNode(ctx, id)
	if err != nil {
		return err
	}
	return fmt.Errorf("catalog: heartbeat of node %s: %w: node is %s", n.Name, ErrConflict, n.State)
}

// RevokeNode marks a node revoked: its certificate is refused from now on.
func (c *Catalog) RevokeNode(ctx context.Context, id int64) error {
	res, err := c.exec(ctx, `UPDATE nodes SET state = 'revoked' WHERE id = ?`, id)
	if err != nil {
		return wrap(err, "revoke node %d", id)
	}
	if affected(res) == 0 {
		return fmt.Errorf("catalog: revoke node %d: %w", id, ErrNotFound)
	}
	return nil
}

// SetNodeCluster moves a node into a cluster (0: none).
func (c *Catalog) SetNodeCluster(ctx context.Context, id, clusterID int64) error {
	res, err := c.exec(ctx, `UPDATE nodes SET cluster_id = ? WHERE id = ?`, ni(clusterID), id)
	if err != nil {
		return wrap(err, "set cluster of node %d", id)
	}
	if affected(res) == 0 {
		return fmt.Errorf("catalog: set cluster of node %d: %w", id, ErrNotFound)
	}
	return nil
}

// DeleteNode removes a node; its VMs lose their owner, its jobs their node.
func (c *Catalog) DeleteNode(ctx context.Context, id int64) error {
	return c.deleteByID(ctx, "nodes", "node", id)
}

// ---- enrollment tokens -----------------------------------------------------

// EnrollmentToken is a one-time token an agent enrolls with. The token
// itself is shown once, when created; only its hash is stored.
type EnrollmentToken struct {
	ID        int64     `json:"id"`
	ClusterID int64     `json:"cluster_id,omitempty"`
	Note      string    `json:"note,omitempty"`
	Created   time.Time `json:"created"`
	Expires   time.Time `json:"expires"`
	Used      time.Time `json:"used,omitzero"`
	NodeID    int64     `json:"node_id,omitempty"`
}

const tokenCols = `id, cluster_id, note, created_at, expires_at, used_at, node_id`

func scanToken(s interface{ Scan(...any) error }) (EnrollmentToken, error) {
	var t EnrollmentToken
	var cluster, created, expires, used, node sql.NullInt64
	err := s.Scan(&t.ID, &cluster, &t.Note, &created, &expires, &used, &node)
	t.ClusterID, t.Created, t.Expires, t.Used, t.NodeID = cluster.Int64, nt(created), nt(expires), nt(used), node.Int64
	return t, err
}

// HashToken is how tokens are stored and looked up.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// CreateEnrollmentToken makes a random token valid for ttl, optionally
// bound to a cluster the node will join. It returns the token (shown once)
// and its record.
func (c *Catalog) CreateEnrollmentToken(ctx context.Context, clusterID int64, ttl time.Duration, note string) (string, EnrollmentToken, error) {
	if ttl <= 0 {
		return "", EnrollmentToken{}, fmt.Errorf("catalog: create enrollment token: %w: ttl must be positive", ErrInvalid)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", EnrollmentToken{}, fmt.Errorf("catalog: create enrollment token: %w", err)
	}
	token := "lbe_" + base64.RawURLEncoding.EncodeToString(b[:])
	now := c.now().UTC()
	var t EnrollmentToken
	err := c.retry(ctx, func() error {
		var err error
		t, err = scanToken(c.w.QueryRowContext(ctx, c.rebind(`INSERT INTO enrollment_tokens (token_hash, cluster_id, note, created_at, expires_at)
			VALUES (?, ?, ?, ?, ?) RETURNING `+tokenCols),
			HashToken(token), ni(clusterID), note, now.UnixNano(), now.Add(ttl).UnixNano()))
		return err
	})
	if err != nil {
		return "", t, wrap(err, "create enrollment token")
	}
	return token, t, nil
}

// ListEnrollmentTokens lists tokens, newest first.
func (c *Catalog) ListEnrollmentTokens(ctx context.Context) ([]EnrollmentToken, error) {
	rows, err := c.query(ctx, `SELECT `+tokenCols+` FROM enrollment_tokens ORDER BY id DESC`)
	if err != nil {
		return nil, wrap(err, "list enrollment tokens")
	}
	defer rows.Close()
	var out []EnrollmentToken
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, wrap(err, "list enrollment tokens")
		}
		out = append(out, t)
	}
	return out, wrap(rows.Err(), "list enrollment tokens")
}

// DeleteEnrollmentToken withdraws a token.
func (c *Catalog) DeleteEnrollmentToken(ctx context.Context, id int64) error {
	return c.deleteByID(ctx, "enrollment_tokens", "enrollment token", id)
}

// UseEnrollmentToken spends a token. One conditional UPDATE does it, so of
// two concurrent uses exactly one succeeds; a replay is ErrConflict, an
// unknown token ErrNotFound, an expired one ErrExpired.
func (c *Catalog) UseEnrollmentToken(ctx context.Context, token string) (EnrollmentToken, error) {
	var t EnrollmentToken
	err := c.tx(ctx, func(tx *Tx) error {
		var err error
		t, err = c.useToken(ctx, tx, token, 0)
		return err
	})
	return t, err
}

func (c *Catalog) useToken(ctx context.Context, tx *Tx, token string, nodeID int64) (EnrollmentToken, error) {
	h := HashToken(token)
	now := c.now().UnixNano()
	t, err := scanToken(tx.QueryRow(ctx, `UPDATE enrollment_tokens SET used_at = ?, node_id = ?
		WHERE token_hash = ? AND used_at IS NULL AND expires_at > ? RETURNING `+tokenCols, now, ni(nodeID), h, now))
	if err == nil {
		return t, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return t, wrap(err, "use enrollment token")
	}
	t, err = scanToken(tx.QueryRow(ctx, `SELECT `+tokenCols+` FROM enrollment_tokens WHERE token_hash = ?`, h))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return t, fmt.Errorf("catalog: use enrollment token: %w: unknown token", ErrNotFound)
	case err != nil:
		return t, wrap(err, "use enrollment token")
	case !t.Used.IsZero():
		return t, fmt.Errorf("catalog: use enrollment token %d: %w: already used at %s", t.ID, ErrConflict, t.Used.Format(time.RFC3339))
	default:
		return t, fmt.Errorf("catalog: use enrollment token %d: %w at %s", t.ID, ErrExpired, t.Expires.Format(time.RFC3339))
	}
}

// EnrollNode spends a token and adds (or re-enrolls, by name) the node in
// one transaction: a refused token leaves no node behind. The node joins
// the token's cluster when the token names one.
func (c *Catalog) EnrollNode(ctx context.Context, token string, n Node) (Node, error) {
	var out Node
	err := c.tx(ctx, func(tx *Tx) error {
		t, err := c.useToken(ctx, tx, token, 0)
		if err != nil {
			return err
		}
		if t.ClusterID != 0 {
			n.ClusterID = t.ClusterID
		}
		out, err = c.upsertNode(ctx, tx, n)
		if err != nil {
			return wrap(err, "enroll node %q", n.Name)
		}
		_, err = tx.Exec(ctx, `UPDATE enrollment_tokens SET node_id = ? WHERE id = ?`, out.ID, t.ID)
		return wrap(err, "enroll node %q", n.Name)
	})
	return out, err
}
