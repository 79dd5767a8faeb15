package criu

import (
	"testing"

	gocriu "github.com/checkpoint-restore/go-criu/v8"
)

// TestSwrkCmd: the CPU time of CRIU is read from go-criu's swrk command;
// this fails when go-criu stops keeping it where swrkCmd looks.
func TestSwrkCmd(t *testing.T) {
	g := gocriu.MakeCriu()
	g.SetCriuPath("true") // any program: it only has to start
	if err := g.Prepare(); err != nil {
		t.Fatal(err)
	}
	cmd := swrkCmd(g)
	_ = g.Cleanup()
	if cmd == nil || cmd.ProcessState == nil {
		t.Fatalf("swrkCmd found %v: go-criu's Criu no longer has swrkCmd *exec.Cmd", cmd)
	}
}
