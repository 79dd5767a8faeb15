//go:build faults

package fault

import (
	"os"
	"strings"
)

// FromEnv returns an Injector for the steps named in $CEDANA_FAULT.
func FromEnv() Injector {
	var steps []string
	for _, s := range strings.Split(os.Getenv(Env), ",") {
		if s = strings.TrimSpace(s); s != "" {
			steps = append(steps, s)
		}
	}
	return Steps(steps...)
}
