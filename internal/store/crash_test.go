package store

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crashChildEnv, when set to "PATH ROUND", makes the test binary run
// crashChild instead of the tests; see TestBoltCrash.
const crashChildEnv = "CEDANA_STORE_CRASH_CHILD"

func TestMain(m *testing.M) {
	if arg := os.Getenv(crashChildEnv); arg != "" {
		os.Exit(crashChild(arg))
	}
	os.Exit(m.Run())
}

// crashChild writes to the store in a loop, printing the number of each
// iteration once all its transactions have committed, until it is killed
// (or gives up after a while, should the parent be gone).
func crashChild(arg string) int {
	path, roundStr, _ := strings.Cut(arg, " ")
	round, _ := strconv.Atoi(roundStr)
	s, err := Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Large-ish records, so that pages split and merge often.
	cmd := strings.Fields(strings.Repeat("--some-flag=value ", 40))
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		if err := crashIteration(s, round, i, cmd); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(i)
	}
	return 0
}

func crashJobID(round, i int) string { return fmt.Sprintf("job-r%d-%05d", round, i) }

func crashIteration(s Store, round, i int, cmd []string) error {
	id := crashJobID(round, i)
	if err := s.CreateJob(ctx, &Job{ID: id, Name: id + "-new", Cmd: cmd, State: "running"}); err != nil {
		return err
	}
	c := &Checkpoint{JobID: id, State: CheckpointPending, Path: "/var/lib/cedana/" + id + ".tar"}
	if err := s.PutCheckpoint(ctx, c); err != nil {
		return err
	}
	c.State, c.Size = CheckpointComplete, int64(i)
	if err := s.PutCheckpoint(ctx, c); err != nil {
		return err
	}
	if _, err := s.UpdateJob(ctx, id, func(j *Job) error {
		j.Name, j.State, j.LastCheckpointID = id, "checkpointed", c.ID
		return nil
	}); err != nil {
		return err
	}
	if _, err := s.AddEvent(ctx, Event{JobID: id, Type: "checkpointed", Message: c.ID}); err != nil {
		return err
	}
	if i%4 == 3 {
		return s.DeleteJob(ctx, crashJobID(round, i-1))
	}
	return nil
}

// TestBoltCrash kills a writer with SIGKILL at arbitrary points and checks
// that the store then opens, is consistent, and holds every write that the
// writer saw committed.
func TestBoltCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cedana.db")
	for round := range 8 {
		acked := runCrashChild(t, path, round, 5+round*5, time.Duration(round)*500*time.Microsecond)
		t.Logf("round %d: killed the writer after %d acknowledged iterations", round, acked+1)

		s := openBolt(t, path)
		if err := s.checkConsistency(); err != nil {
			t.Fatalf("round %d: inconsistent after SIGKILL after %d iterations:\n%v", round, acked+1, err)
		}
		for i := 0; i <= acked; i++ {
			id := crashJobID(round, i)
			j, err := s.GetJob(ctx, id)
			if i%4 == 2 && i+1 <= acked {
				wantErr(t, err, ErrNotFound) // deleted by iteration i+1
				continue
			}
			if i%4 == 2 && err != nil {
				continue // iteration i+1 may have deleted it before the kill
			}
			if err != nil || j.Name != id || j.LastCheckpointID == "" {
				t.Fatalf("round %d: acknowledged job %s = %+v, %v", round, id, j, err)
			}
			c, err := s.GetCheckpoint(ctx, j.LastCheckpointID)
			if err != nil || c.State != CheckpointComplete || c.Size != int64(i) {
				t.Fatalf("round %d: checkpoint of %s = %+v, %v", round, id, c, err)
			}
			if ev, err := s.ListEvents(ctx, id, 0, 0); err != nil || len(ev) != 1 || ev[0].Message != c.ID {
				t.Fatalf("round %d: events of %s = %+v, %v", round, id, ev, err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// runCrashChild runs crashChild on path until it has acknowledged minIters
// iterations, waits delay more and kills it; it returns the last iteration
// acknowledged.
func runCrashChild(t *testing.T, path string, round, minIters int, delay time.Duration) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d", crashChildEnv, path, round))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := -1
	sc := bufio.NewScanner(out)
	for acked < minIters-1 && sc.Scan() {
		acked, _ = strconv.Atoi(sc.Text())
	}
	if acked < minIters-1 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("round %d: writer stopped after %d iterations: %s", round, acked+1, stderr.String())
	}
	time.Sleep(delay)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Iterations acknowledged between our last read and the kill count too.
	for sc.Scan() {
		acked, _ = strconv.Atoi(sc.Text())
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("round %d: writer did not die of SIGKILL: %v: %s", round, err, stderr.String())
	}
	return acked
}
