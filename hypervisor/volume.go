package hypervisor

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// VolumeOf finds the mounted filesystem path lives on, from a
// /proc/<pid>/mountinfo file (mountinfo "" means /proc/self/mountinfo).
// path is as the mount table's owner sees it. The deepest mount point that
// contains path wins; an unreadable table gives a zero Volume.
func VolumeOf(mountinfo, path string) Volume {
	if mountinfo == "" {
		mountinfo = "/proc/self/mountinfo"
	}
	f, err := os.Open(mountinfo)
	if err != nil {
		return Volume{}
	}
	defer f.Close()
	path = filepath.Clean(path)
	var best Volume
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		v, ok := parseMountinfo(sc.Text())
		if !ok || !under(path, v.Mount) {
			continue
		}
		// Later lines shadow earlier ones at the same mount point.
		if len(v.Mount) >= len(best.Mount) {
			best = v
		}
	}
	return best
}

// parseMountinfo reads one line of proc(5) mountinfo:
// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
func parseMountinfo(line string) (Volume, bool) {
	fields := strings.Fields(line)
	if len(fields) < 10 {
		return Volume{}, false
	}
	sep := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || sep+2 >= len(fields) {
		return Volume{}, false
	}
	return Volume{
		Mount:  unescapeMount(fields[4]),
		FSType: fields[sep+1],
		Source: unescapeMount(fields[sep+2]),
	}, true
}

// unescapeMount undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

func under(path, mount string) bool {
	if mount == "/" {
		return strings.HasPrefix(path, "/")
	}
	return path == mount || strings.HasPrefix(path, mount+"/")
}
