package repo

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"lifeboat/repo/storage"
)

// typeVerdict is the envelope type of a boot verdict: what a verify-boot
// of a point found (recovery.BootVerdict as JSON, serial log included).
// It is sealed like a manifest (compressed, encrypted with the data key
// when the repository is, else checksummed), because the serial log and
// a check's output are guest data.
const typeVerdict = 'V'

// maxVerdict bounds a verdict object; the recovery package truncates the
// serial log well below it.
const maxVerdict = 4 << 20

// verdictPrefix is where a point's verdicts live: verify/<point-id>/.
func verdictPrefix(pointID string) string { return "verify/" + pointID + "/" }

// SaveVerdict stores a verdict about a point under
// verify/<point-id>/<YYYYMMDDTHHMMSSZ>-<8 hex>: objects are written once,
// so every run keeps its own, and the newest sorts last. It returns the
// key.
func (r *Repository) SaveVerdict(ctx context.Context, pointID string, t time.Time, plain []byte) (string, error) {
	if !ValidPointID(pointID) {
		return "", fmt.Errorf("save verdict: %q is not a point ID", pointID)
	}
	if len(plain) > maxVerdict {
		return "", fmt.Errorf("save verdict of %s: %d bytes, more than %d", pointID, len(plain), maxVerdict)
	}
	key := verdictPrefix(pointID) + NewPointID(t)
	obj, err := r.codec.seal(typeVerdict, key, plain, true)
	if err != nil {
		return "", err
	}
	if err := r.b.Put(ctx, key, obj); err != nil {
		return "", fmt.Errorf("save verdict of %s: %w", pointID, err)
	}
	return key, nil
}

// VerdictKeys lists the keys of a point's verdicts, oldest first.
func (r *Repository) VerdictKeys(ctx context.Context, pointID string) ([]string, error) {
	if !ValidPointID(pointID) {
		return nil, fmt.Errorf("list verdicts: %q is not a point ID", pointID)
	}
	var keys []string
	err := r.b.List(ctx, verdictPrefix(pointID), func(o storage.ObjectInfo) error {
		if ValidPointID(strings.TrimPrefix(o.Key, verdictPrefix(pointID))) {
			keys = append(keys, o.Key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list verdicts of %s: %w", pointID, err)
	}
	sort.Strings(keys)
	return keys, nil
}

// LoadVerdict reads one verdict object by key and returns its plaintext.
func (r *Repository) LoadVerdict(ctx context.Context, key string) ([]byte, error) {
	if !strings.HasPrefix(key, "verify/") {
		return nil, fmt.Errorf("load verdict: %q is not a verdict key", key)
	}
	obj, err := r.b.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("load verdict %s: %w", key, err)
	}
	plain, err := r.codec.open(typeVerdict, key, obj)
	if err != nil {
		return nil, fmt.Errorf("load verdict: %w", err)
	}
	return plain, nil
}
