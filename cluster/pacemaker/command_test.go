package pacemaker

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// Options.Command runs each tool through a prefix (as nsenter into a lab
// node's namespaces): the prefix gets the tool's path and arguments.
func TestCommandPrefix(t *testing.T) {
	bin := t.TempDir()
	m := New(Options{BinDir: bin, Command: []string{"/bin/sh", "-c", `printf '%s|' "$@"; printf 'LC_ALL=%s' "$LC_ALL"`, "sh"}})
	out, err := m.run(context.Background(), "crm_mon", "--one-shot", "--output-as=xml")
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(bin, "crm_mon") + "|--one-shot|--output-as=xml|LC_ALL=C"
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("prefixed run: %q, want %q", got, want)
	}
	// The prefix is not changed by a run (its backing array is shared).
	if _, err := m.run(context.Background(), "cibadmin", "--query"); err != nil {
		t.Fatal(err)
	}
	if len(m.opts.Command) != 4 || m.opts.Command[3] != "sh" {
		t.Errorf("Command changed: %q", m.opts.Command)
	}
}
