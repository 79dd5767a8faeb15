package chunks

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzParseManifest: a manifest read from storage is refused or valid, and
// stays valid through a JSON round trip.
func FuzzParseManifest(f *testing.F) {
	d := strings.Repeat("ab", 32)
	f.Add([]byte(`{"version":1,"size":70000,"skeleton":3,"skeleton_sha256":"` + d + `","chunks":[{"off":1,"xxh3":"` + d[:32] + `","sha256":"` + d + `","size":69997}]}`))
	f.Add([]byte(`{"version":1,"size":-1,"skeleton":0,"chunks":[{"off":0,"sha256":"` + d + `","size":-1}]}`))
	f.Add([]byte(`{"version":1,"size":10,"skeleton":10,"skeleton_sha256":"` + d + `","chunks":[{"off":9,"sha256":"` + d + `","size":9223372036854775807}]}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseManifest(data)
		if err != nil {
			return
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseManifest(again); err != nil {
			t.Fatalf("a valid manifest is refused after a round trip: %v", err)
		}
	})
}
