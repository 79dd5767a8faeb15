package jobs

import (
	"errors"
	"fmt"
)

// State is where a job is in its lifecycle.
//
//	    run (starting) / manage
//	            │
//	            ▼        dump (leave running)
//	┌────────► running ◄──────────────┐
//	│           │  │ └──► dumping ────┘
//	│   restore │  │           │ dump (stop)
//	│           │  │           ▼
//	│           │  │      checkpointed
//	│           │  │           │ restore
//	│           │  ▼           ▼
//	└──────── restoring ◄── failed / exited / killed
//
// In cluster mode a job whose copy here was ended because another node
// runs it becomes moved (only rm applies).
//
// A job that dies unexpectedly becomes failed (or exited, with status 0);
// kill makes it killed. Every state but dumping and restoring accepts a
// restore; only running accepts a dump; a job without processes can be
// removed (rm), a running one only after a kill (rm -f).
type State string

// Job states.
const (
	Starting     State = "starting"
	Running      State = "running"
	Dumping      State = "dumping"
	Checkpointed State = "checkpointed"
	Restoring    State = "restoring"
	Exited       State = "exited"
	Failed       State = "failed"
	Killed       State = "killed"
	// Moved: another node of the cluster runs the job now (a failover, or
	// a stale copy ended by fencing); this node keeps only its history.
	Moved State = "moved"
)

// ErrIllegalTransition means an operation does not apply to a job in its
// current state (e.g. a second dump while one runs).
var ErrIllegalTransition = errors.New("illegal state transition")

// transitions lists, for each operation, the states it may start from.
var transitions = map[string][]State{
	"dump":    {Running},
	"restore": {Checkpointed, Exited, Failed, Killed},
	"kill":    {Running, Checkpointed, Exited, Failed},
	"remove":  {Checkpointed, Exited, Failed, Killed, Moved},
}

// explain says why an operation is refused in a state, in user terms.
var explain = map[State]string{
	Starting:     "it is starting",
	Dumping:      "a checkpoint of it is in progress",
	Restoring:    "it is being restored",
	Running:      "it is running",
	Checkpointed: "it is checkpointed and not running (restore it first)",
	Exited:       "it has exited (restore it from a checkpoint first)",
	Failed:       "it has failed (restore it from a checkpoint first)",
	Killed:       "it was killed (restore it from a checkpoint first)",
	Moved:        "another node of the cluster runs it now (cedana ps shows where)",
}

// check returns nil if op may start from s, or an error explaining why not.
func check(op string, s State, job string) error {
	for _, from := range transitions[op] {
		if s == from {
			return nil
		}
	}
	why := explain[s]
	if why == "" {
		why = fmt.Sprintf("it is %s", s)
	}
	return fmt.Errorf("%w: cannot %s job %s: %s", ErrIllegalTransition, op, job, why)
}

// alive reports whether a job in state s has (or should have) a process.
func (s State) alive() bool { return s == Running || s == Dumping }
