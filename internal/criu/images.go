package criu

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/checkpoint-restore/go-criu/v8/crit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
)

// Task is one process of a dumped tree, as CRIU recorded it.
type Task struct {
	PID, PPID, PGID, SID int
}

// DumpedTasks reads the tree CRIU actually dumped from the images in dir
// (pstree.img). It is the authoritative list: a tree can fork between the
// moment Cedana looks at it and the moment CRIU freezes it.
func DumpedTasks(dir string) ([]Task, error) {
	f, err := os.Open(filepath.Join(dir, "pstree.img"))
	if err != nil {
		return nil, fmt.Errorf("read dumped tree: %w", err)
	}
	defer f.Close()
	img, err := crit.New(f, nil, "", false, true).Decode(&pstree.PstreeEntry{})
	if err != nil {
		return nil, fmt.Errorf("decode pstree.img: %w", err)
	}
	out := make([]Task, 0, len(img.Entries))
	for _, e := range img.Entries {
		p, ok := e.Message.(*pstree.PstreeEntry)
		if !ok {
			return nil, fmt.Errorf("decode pstree.img: unexpected entry %T", e.Message)
		}
		out = append(out, Task{PID: int(p.GetPid()), PPID: int(p.GetPpid()), PGID: int(p.GetPgid()), SID: int(p.GetSid())})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("pstree.img lists no task")
	}
	return out, nil
}
