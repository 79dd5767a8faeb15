package template

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/storage"
)

// memNames is an in-process Names: the reservations of a cluster whose
// nodes are the stores of one test.
type memNames struct {
	mu   sync.Mutex
	held map[string]bool
}

func (n *memNames) Reserve(_ context.Context, name string) (func(), error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.held[name] {
		return nil, fmt.Errorf("%w: %s held by another node", ErrBusy, name)
	}
	n.held[name] = true
	return func() { n.mu.Lock(); delete(n.held, name); n.mu.Unlock() }, nil
}

// writeArchive writes a small valid archive whose one image holds body.
func writeArchive(t *testing.T, body string) []byte {
	t.Helper()
	images := t.TempDir()
	if err := os.WriteFile(filepath.Join(images, "pages-1.img"), bytes.Repeat([]byte(body), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "a.zip")
	m := &archive.Manifest{Kind: archive.KindProcess, Created: time.Now().UTC(), RootPID: 1, PIDNamespace: true,
		Processes: []archive.Process{{PID: 1, Name: "svc"}}}
	if _, _, err := archive.Create(path, m, images, nil, archive.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// makeShared makes template name in s from the archive bytes.
func makeShared(t *testing.T, s *Store, name string, zip []byte) *Template {
	t.Helper()
	ctx := context.Background()
	d, err := s.Begin(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := storage.Put(ctx, s.Backend(), d.Key, bytes.NewReader(zip)); err != nil {
		t.Fatal(err)
	}
	r, err := archive.OpenReaderAt("x", bytes.NewReader(zip), int64(len(zip)), archive.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	tp := &Template{Kind: "process", Size: int64(len(zip)), Digest: ContentDigest(r.Manifest)}
	r.Close()
	if err := s.Commit(ctx, d, tp); err != nil {
		t.Fatal(err)
	}
	return tp
}

// zipFiles lists the archives under dir.
func zipFiles(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".zip") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// TestSharedStore: two nodes on one backend. A template made on one is
// listed and cloned on the other (images fetched once, then reused, and
// no copy of the archive on its disk); names are refused while taken or
// reserved; a damaged or replaced archive is refused before anything is
// unpacked; removal on one node removes it for both.
func TestSharedStore(t *testing.T) {
	ctx := context.Background()
	mem := storage.NewMemory()
	names := &memNames{held: map[string]bool{}}
	a := NewSharedStore(t.TempDir(), mem, names, "a")
	b := NewSharedStore(t.TempDir(), mem, names, "b")
	zip := writeArchive(t, "warm state ")

	// A reservation held elsewhere refuses the name.
	release, _ := names.Reserve(ctx, "web")
	if _, err := a.Begin(ctx, "web"); !errors.Is(err, ErrExists) {
		t.Fatalf("Begin while another node holds the name: %v", err)
	}
	release()
	// An unfinished draft is not listed anywhere.
	d, err := a.Begin(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if ts, err := b.List(ctx); err != nil || len(ts) != 0 {
		t.Fatalf("a draft is listed: %v %v", ts, err)
	}
	if _, err := b.Begin(ctx, "web"); !errors.Is(err, ErrExists) {
		t.Fatalf("Begin on b while a makes the name: %v", err)
	}
	a.Abort(d)
	tp := makeShared(t, a, "web", zip)
	if _, err := b.Begin(ctx, "web"); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("Begin of a taken name on b: %v", err)
	}

	ts, err := b.List(ctx)
	if err != nil || len(ts) != 1 || ts[0].Name != "web" || ts[0].Node != "a" || ts[0].Location == "" || ts[0].Digest != tp.Digest {
		t.Fatalf("List on b: %+v %v", ts, err)
	}
	got, err := b.Get(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	c := NewCache()
	dir, m, hit, done, err := c.Images(ctx, b, got)
	if err != nil || hit || m == nil {
		t.Fatalf("first Images on b: hit=%v %v", hit, err)
	}
	if img, err := os.ReadFile(filepath.Join(dir, "pages-1.img")); err != nil || !bytes.HasPrefix(img, []byte("warm state ")) {
		t.Fatalf("unpacked image: %v", err)
	}
	done()
	if z := zipFiles(b.Root()); len(z) > 0 {
		t.Fatalf("the archive was copied to b's disk: %v", z)
	}
	if _, _, hit, done, err := c.Images(ctx, b, got); err != nil || !hit {
		t.Fatalf("second Images on b: hit=%v %v", hit, err)
	} else {
		done()
	}

	// A damaged object: refused on a node without the images yet.
	bad := append([]byte(nil), zip...)
	bad[len(bad)/3] ^= 0x55
	if err := storage.Put(ctx, mem, got.Key, bytes.NewReader(bad)); err != nil {
		t.Fatal(err)
	}
	fresh := NewSharedStore(t.TempDir(), mem, names, "c")
	if _, _, _, _, err := NewCache().Images(ctx, fresh, got); !errors.Is(err, archive.ErrCorrupt) && !errors.Is(err, archive.ErrNotArchive) {
		t.Fatalf("damaged archive: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(fresh.Root(), ".cache")); len(ents) != 0 {
		t.Fatalf("a damaged archive left a cache entry: %v", ents)
	}
	// Another valid archive in its place: its content digest differs.
	other := writeArchive(t, "other state ")
	if err := storage.Put(ctx, mem, got.Key, bytes.NewReader(other)); err != nil {
		t.Fatal(err)
	}
	if _, _, _, _, err := NewCache().Images(ctx, fresh, got); !errors.Is(err, archive.ErrCorrupt) || !strings.Contains(err.Error(), "not the one the template recorded") {
		t.Fatalf("replaced archive: %v", err)
	}
	// Damaged metadata.
	if err := storage.Put(ctx, mem, metaKey("web"), strings.NewReader("{")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "web"); !errors.Is(err, archive.ErrCorrupt) || !strings.Contains(err.Error(), "bad metadata") {
		t.Fatalf("damaged metadata: %v", err)
	}

	// Removal on a: gone for b, the name free again, nothing left behind;
	// b's cached images go at its next prune.
	if err := a.Remove(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "web"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("Get after removal: %v", err)
	}
	if left, _ := mem.List(ctx, "templates/"); len(left) != 0 {
		t.Fatalf("removal left objects: %v", left)
	}
	c.Prune(b, map[string]bool{})
	if ents, _ := os.ReadDir(filepath.Join(b.Root(), ".cache")); len(ents) != 0 {
		t.Fatalf("prune left %d entries", len(ents))
	}
}

// TestPruneKeepsEntriesInUse: an entry whose images a clone still reads
// survives a prune.
func TestPruneKeepsEntriesInUse(t *testing.T) {
	ctx := context.Background()
	mem := storage.NewMemory()
	s := NewSharedStore(t.TempDir(), mem, nil, "")
	tp := makeShared(t, s, "web", writeArchive(t, "x"))
	got, _ := s.Get(ctx, "web")
	c := NewCache()
	dir, _, _, done, err := c.Images(ctx, s, got)
	if err != nil {
		t.Fatal(err)
	}
	c.Prune(s, map[string]bool{})
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("an entry in use was pruned: %v", err)
	}
	done()
	c.Prune(s, map[string]bool{tp.Digest: true})
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("a kept entry was pruned: %v", err)
	}
	c.Prune(s, map[string]bool{})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("an unused entry of a removed template survived: %v", err)
	}
}
