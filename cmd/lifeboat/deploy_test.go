package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"lifeboat/internal/testenv"
)

// unitFile is the settings of a systemd unit, by key, in order.
func unitFile(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s:%d: not KEY=VALUE: %q", path, n, line)
		}
		out[k] = append(out[k], v)
	}
	return out
}

// usageFlags are the flags `lifeboat ARGS -h` lists.
func usageFlags(t *testing.T, args ...string) map[string]bool {
	t.Helper()
	out, err := exec.Command(lifeboatBin, append(args, "-h")...).CombinedOutput()
	if err != nil {
		t.Fatalf("lifeboat %s -h: %v\n%s", strings.Join(args, " "), err, out)
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	return flags
}

// The units in deploy/ start the binary with flags it has, define every
// variable they expand, and the variables their example environment
// files set are ones the units or the binary read. systemd-analyze
// verify checks them too where it is installed (not required, also not
// under CI: build hosts need not run systemd).
func TestDeployUnits(t *testing.T) {
	root := testenv.RepoRoot(t)
	var src strings.Builder
	goFiles, _ := filepath.Glob(filepath.Join(root, "cmd", "lifeboat", "*.go"))
	for _, f := range goFiles {
		if !strings.HasSuffix(f, "_test.go") {
			b, _ := os.ReadFile(f)
			src.Write(b)
		}
	}
	for _, c := range []struct{ unit, command, env string }{
		{"lifeboat-server.service", "server", "server.env"},
		{"lifeboat-agent.service", "agent", "agent.env"},
	} {
		t.Run(c.command, func(t *testing.T) {
			path := filepath.Join(root, "deploy", c.unit)
			u := unitFile(t, path)
			if len(u["ExecStart"]) != 1 {
				t.Fatalf("%s: %d ExecStart lines", c.unit, len(u["ExecStart"]))
			}
			words := strings.Fields(u["ExecStart"][0])
			if words[0] != "/usr/local/bin/lifeboat" || words[1] != c.command {
				t.Fatalf("%s: ExecStart %q does not run lifeboat %s", c.unit, u["ExecStart"][0], c.command)
			}
			have := usageFlags(t, c.command)
			defined := map[string]bool{}
			for _, e := range u["Environment"] {
				k, _, _ := strings.Cut(strings.Trim(e, `"`), "=")
				defined[k] = true
			}
			for _, w := range words[2:] {
				switch {
				case strings.HasPrefix(w, "-"):
					name, _, _ := strings.Cut(strings.TrimLeft(w, "-"), "=")
					if !have[name] {
						t.Errorf("%s: ExecStart passes --%s, which `lifeboat %s` does not have", c.unit, name, c.command)
					}
				case strings.HasPrefix(w, "$"):
					v := strings.Trim(w, "${}")
					if !defined[v] {
						t.Errorf("%s: ExecStart expands $%s, which no Environment= line defines (unset, it would vanish or be empty by accident)", c.unit, v)
					}
				}
			}
			for _, k := range []string{"Restart", "NoNewPrivileges", "ProtectSystem", "EnvironmentFile", "StateDirectory", "User"} {
				if len(u[k]) == 0 {
					t.Errorf("%s: no %s=", c.unit, k)
				}
			}
			if u["ProtectSystem"][0] != "strict" || u["NoNewPrivileges"][0] != "yes" || u["Restart"][0] != "on-failure" {
				t.Errorf("%s: ProtectSystem=%v NoNewPrivileges=%v Restart=%v", c.unit, u["ProtectSystem"], u["NoNewPrivileges"], u["Restart"])
			}
			if u["EnvironmentFile"][0] != "-/etc/lifeboat/"+c.env {
				t.Errorf("%s: EnvironmentFile=%s", c.unit, u["EnvironmentFile"][0])
			}
			// The example environment file sets only what is read.
			b, err := os.ReadFile(filepath.Join(root, "deploy", c.env))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range regexp.MustCompile(`(?m)^#?(LIFEBOAT_[A-Z_]+)=`).FindAllStringSubmatch(string(b), -1) {
				if !defined[m[1]] && !strings.Contains(src.String(), `getenv("`+m[1]+`")`) {
					t.Errorf("%s sets %s, which neither %s nor the binary reads", c.env, m[1], c.unit)
				}
			}
			// systemd's own check, with the unit pointing at the test binary.
			sa, err := exec.LookPath("systemd-analyze")
			if err != nil {
				t.Logf("systemd-analyze not installed: skipped its check")
				return
			}
			unit, _ := os.ReadFile(path)
			tmp := filepath.Join(t.TempDir(), c.unit)
			os.WriteFile(tmp, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/lifeboat", lifeboatBin)), 0o644)
			out, err := exec.Command(sa, "verify", "--man=no", tmp).CombinedOutput()
			if err != nil || strings.Contains(string(out), c.unit) {
				t.Errorf("systemd-analyze verify %s: %v\n%s", c.unit, err, out)
			}
		})
	}
}
