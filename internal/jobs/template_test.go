package jobs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/storage"
	"github.com/cedana/cedana/internal/store"
	"github.com/cedana/cedana/internal/template"
)

// writeTemplateArchive writes a valid archive of a PID namespace's init.
func writeTemplateArchive(t *testing.T) string {
	t.Helper()
	images := t.TempDir()
	if err := os.WriteFile(filepath.Join(images, "core-1.img"), []byte("fake"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "svc.zip")
	m := &archive.Manifest{Kind: archive.KindProcess, Created: time.Now().UTC(), RootPID: 1, PIDNamespace: true,
		Processes: []archive.Process{{PID: 1, Name: "svc"}}}
	if _, _, err := archive.Create(path, m, images, nil, archive.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSharedTemplateRemoveWhileInUse: with a storage backend, an
// imported template lands there (not under the state directory); a name
// in use cannot be made again; template rm is refused while clones of it
// are being started here, and works once they are.
func TestSharedTemplateRemoveWhileInUse(t *testing.T) {
	ctx := context.Background()
	mem := storage.NewMemory()
	m := newTestManager(t, store.NewMemory(), newFakeEngine(t), Config{NoCgroups: true, Storage: mem})
	file := writeTemplateArchive(t)
	tp, err := m.CreateTemplate(ctx, "web", TemplateSource{File: file})
	if err != nil {
		t.Fatal(err)
	}
	if objs, _ := mem.List(ctx, "templates/web/"); len(objs) != 2 || !strings.HasPrefix(tp.Location, "memory") {
		t.Fatalf("template not in the backend: %v, location %q", objs, tp.Location)
	}
	if _, err := m.CreateTemplate(ctx, "web", TemplateSource{File: file}); !errors.Is(err, template.ErrExists) {
		t.Fatalf("a taken name: %v", err)
	}
	release, err := m.tpl().use("web") // a clone run starting
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RemoveTemplate(ctx, "web"); !errors.Is(err, template.ErrBusy) {
		t.Fatalf("rm while clones start: %v", err)
	}
	if ts, _ := m.Templates(ctx); len(ts) != 1 {
		t.Fatalf("the refused rm removed the template: %v", ts)
	}
	release()
	if err := m.RemoveTemplate(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if objs, _ := mem.List(ctx, "templates/"); len(objs) != 0 {
		t.Fatalf("rm left objects: %v", objs)
	}
	if _, err := m.tpl().store.Get(ctx, "web"); !errors.Is(err, template.ErrNotFound) {
		t.Fatalf("a removed template: %v", err)
	}
}
