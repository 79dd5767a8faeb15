package archive

import "time"

// testManifest returns a valid manifest without entries.
func testManifest() *Manifest {
	return &Manifest{
		Kind:      KindProcess,
		Created:   time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Cedana:    "test",
		RootPID:   42,
		Processes: []Process{{PID: 42, PPID: 1, Name: "sleep"}},
	}
}
