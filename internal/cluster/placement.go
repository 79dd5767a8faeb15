package cluster

import (
	"fmt"
	"sort"
)

// Rank orders the ready nodes best first for a new job: fewest running
// jobs, then most free memory, then name (so every node computes the same
// order from the same heartbeats). Draining and down nodes are left out.
func Rank(nodes []NodeInfo) []NodeInfo {
	var ready []NodeInfo
	for _, n := range nodes {
		if n.State == StateReady {
			ready = append(ready, n)
		}
	}
	sort.SliceStable(ready, func(i, j int) bool {
		a, b := ready[i], ready[j]
		if a.RunningJobs != b.RunningJobs {
			return a.RunningJobs < b.RunningJobs
		}
		if a.FreeMemory != b.FreeMemory {
			return a.FreeMemory > b.FreeMemory
		}
		return a.Name < b.Name
	})
	return ready
}

// Why says in one line why Rank put n first, for the user.
func Why(n NodeInfo) string {
	return fmt.Sprintf("ready, %d running jobs, %d MiB free", n.RunningJobs, n.FreeMemory>>20)
}

// rankOf is me's place in Rank(nodes); ok is false when me is not ready.
func rankOf(nodes []NodeInfo, me string) (rank int, ok bool) {
	for i, n := range Rank(nodes) {
		if n.Name == me {
			return i, true
		}
	}
	return 0, false
}
