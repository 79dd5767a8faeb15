package integration

import (
	"encoding/json"
	"os/exec"
	"testing"
)

// TestCheckAgreesWithCRIU: `cedana check` reports incremental pre-dumps
// and lazy pages exactly as CRIU's own CLI does. CRIU's RPC feature check
// used to claim memory tracking on kernels without soft-dirty, where
// `criu check --feature mem_dirty_track` fails and pre-dump refuses.
func TestCheckAgreesWithCRIU(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	r := e.cedana("check", "-o", "json")
	var rep struct {
		Items []struct {
			Name   string `json:"name"`
			OK     bool   `json:"ok"`
			Detail string `json:"detail"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("check -o json: %v\n%s", err, r)
	}
	got := map[string]bool{}
	for _, it := range rep.Items {
		got[it.Name] = it.OK
	}
	for item, feature := range map[string]string{"pre-dump": "mem_dirty_track", "lazy-pages": "uffd-noncoop"} {
		want := exec.Command("criu", "check", "--feature", feature).Run() == nil
		if ok, found := got[item]; !found || ok != want {
			t.Errorf("cedana check says %s ok=%v (present %v); `criu check --feature %s` says %v", item, ok, found, feature, want)
		}
	}
	if _, found := got["migration"]; !found {
		t.Errorf("cedana check has no migration line:\n%s", r.stdout)
	}
}
