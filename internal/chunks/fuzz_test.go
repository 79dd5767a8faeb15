package chunks

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// FuzzParseManifest: a manifest read from storage either is refused with
// ErrCorrupt or is valid, and stays so through a JSON round trip.
func FuzzParseManifest(f *testing.F) {
	d := strings.Repeat("ab", 32)
	f.Add([]byte(`{"version":1,"checkpoint":"ck","images":[{"name":"pages-1.img","size":3,"chunks":[{"sha256":"` + d + `","size":3}]}]}`))
	f.Add([]byte(`{"version":1,"checkpoint":"ck","images":[{"name":"x","size":-1,"chunks":[{"sha256":"` + d + `","size":-1}]}]}`))
	f.Add([]byte(`{"version":1,"checkpoint":"../ck"}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseManifest(data, "ck")
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseManifest(again, "ck"); err != nil {
			t.Fatalf("a valid manifest is refused after a round trip: %v", err)
		}
	})
}
