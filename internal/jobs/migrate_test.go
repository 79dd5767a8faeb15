package jobs

import (
	"errors"
	"testing"

	"github.com/cedana/cedana/internal/store"
)

func TestMigratedContainerID(t *testing.T) {
	for _, c := range []struct{ id, from, to, want string }{
		{"mig", "a", "b", "mig-b"},
		{"mig-b", "b", "a", "mig-a"}, // back: never <id>-b-a
		{"mig-a", "b", "c", "mig-a-c"},
		{"-a", "a", "b", "-a-b"},
	} {
		if got := MigratedContainerID(c.id, c.from, c.to); got != c.want {
			t.Errorf("MigratedContainerID(%q, %q, %q) = %q, want %q", c.id, c.from, c.to, got, c.want)
		}
	}
}

func TestCanMigrate(t *testing.T) {
	m := &Manager{}
	if err := m.canMigrate(&store.Job{Name: "p"}); err != nil {
		t.Errorf("a process job: %v", err)
	}
	if err := m.canMigrate(&store.Job{Name: "d", Runtime: "docker", Container: "x"}); !errors.Is(err, ErrIllegalTransition) {
		t.Errorf("a Docker container job: %v; want ErrIllegalTransition", err)
	}
	if err := m.canMigrate(&store.Job{Name: "r", Runtime: "runc", Container: "x"}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("a runc container job without container support: %v; want ErrInvalid", err)
	}
	if err := m.canImportContainer(ImportSpec{Name: "r", Runtime: "runc"}); err == nil {
		t.Error("a runc container job arriving without a container ID was accepted")
	}
}
