package itemlevel

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"lifeboat/disk"
	"lifeboat/disk/raw"
	"lifeboat/repo"
	"lifeboat/repo/storage/local"
)

// TestRepoFileImage backs a GPT disk (FAT32 and XFS) up into an encrypted
// repository and browses it through repo.FileImage, which decrypts and
// decompresses chunks on demand.
func TestRepoFileImage(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	gdir := filepath.Join(dir, "g")
	os.Mkdir(gdir, 0o755)
	path, fatTree, xfsTree := gptDisk(t, gdir)

	b, err := local.Open(filepath.Join(dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Init(ctx, b, repo.InitOptions{ChunkSize: mib, Password: "pw", ScryptN: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	src, err := raw.Open(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	id, _, _, err := r.WriteImage(ctx, src, repo.WriteOptions{})
	src.Close()
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	p := &repo.Point{Version: 1, ID: repo.NewPointID(at), Name: "vm", Kind: "image", Time: at, Consistency: "file",
		Files: []repo.File{{Path: "disk.raw", Role: repo.RoleDisk, Size: src.Size(), Index: id.String(), Disk: &disk.Info{Format: disk.Raw, Size: src.Size()}}}}
	if err := r.SavePoint(ctx, p); err != nil {
		t.Fatal(err)
	}
	img, err := r.OpenFile(ctx, p, "disk.raw")
	if err != nil {
		t.Fatal(err)
	}
	vols, err := OpenVolumes(ctx, img, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 2 || vols[0].FS != FSFAT || vols[1].FS != FSXFS {
		t.Fatalf("volumes %+v", vols)
	}
	checkFS(t, fsCase{name: "repo-fat", fsys: mustOpenFS(t, img, vols[0]), tree: fatTree, fold: true})
	checkFS(t, fsCase{name: "repo-xfs", fsys: mustOpenFS(t, img, vols[1]), tree: xfsTree})
}
