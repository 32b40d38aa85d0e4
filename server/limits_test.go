package server

import (
	"testing"

	"lifeboat/catalog"
)

// The configured caps reach the catalog's claim limits: recoveries and
// verify-boots (each boots a throwaway guest) are bounded per kind.
func TestLimits(t *testing.T) {
	for _, c := range []struct {
		cfg          Config
		recov, boots int
	}{
		{Config{MaxRecoveries: 8, MaxVerifyBoots: 2}, 8, 2},
		{Config{MaxRecoveries: 3, MaxVerifyBoots: 1}, 3, 1},
		{Config{MaxRecoveries: -1, MaxVerifyBoots: -1}, 0, 0}, // negative: no cap
	} {
		lim := (&Server{cfg: c.cfg}).limits()
		if lim.PerKind[catalog.KindRecovery] != c.recov || lim.PerKind[catalog.KindVerifyBoot] != c.boots {
			t.Errorf("%+v: per-kind limits %v", c.cfg, lim.PerKind)
		}
	}
}
