package main

import (
	"strings"
	"testing"
)

// events is a go test -json stream with a pass, a failure, a skip with a
// reason, a skipped subtest and a build error.
const events = `{"Action":"start","Package":"p"}
{"Action":"run","Package":"p","Test":"TestOK"}
{"Action":"output","Package":"p","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"p","Test":"TestOK","Output":"    a_test.go:3: chatter\n"}
{"Action":"pass","Package":"p","Test":"TestOK"}
{"Action":"output","Package":"p","Test":"TestBad","Output":"=== RUN   TestBad\n"}
{"Action":"output","Package":"p","Test":"TestBad","Output":"    a_test.go:9: broken\n"}
{"Action":"output","Package":"p","Test":"TestBad","Output":"--- FAIL: TestBad (0.00s)\n"}
{"Action":"fail","Package":"p","Test":"TestBad"}
{"Action":"output","Package":"p","Test":"TestRoot","Output":"=== RUN   TestRoot\n"}
{"Action":"output","Package":"p","Test":"TestRoot","Output":"    h_test.go:75: skipping: needs root\n"}
{"Action":"output","Package":"p","Test":"TestRoot","Output":"--- SKIP: TestRoot (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestRoot"}
{"Action":"output","Package":"p","Test":"TestT/sub","Output":"        x_test.go:5: no trusted xattrs\n"}
{"Action":"output","Package":"p","Test":"TestT/sub","Output":"    --- SKIP: TestT/sub (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestT/sub"}
{"Action":"output","Package":"p","Output":"FAIL\n"}
{"Action":"output","Package":"p","Output":"FAIL\tp\t0.01s\n"}
{"Action":"fail","Package":"p"}
{"ImportPath":"q","Action":"build-output","Output":"q/x.go:1:1: syntax error\n"}
{"ImportPath":"q","Action":"build-fail"}
not json at all
`

func TestPassThrough(t *testing.T) {
	var out strings.Builder
	failed, err := passThrough(strings.NewReader(events), &out)
	if err != nil || !failed {
		t.Fatalf("failed %v, err %v; want a failure", failed, err)
	}
	got := out.String()
	for _, want := range []string{"a_test.go:9: broken", "--- FAIL: TestBad", "FAIL\tp\t0.01s", "syntax error", "not json at all"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "chatter") || strings.Contains(got, "needs root") {
		t.Errorf("output of passed or skipped tests printed:\n%s", got)
	}
}

func TestListSkips(t *testing.T) {
	var out strings.Builder
	if err := listSkips(strings.NewReader(events), &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"Skipped tests (2)", "p TestRoot: h_test.go:75: skipping: needs root", "p TestT/sub: x_test.go:5: no trusted xattrs"} {
		if !strings.Contains(got, want) {
			t.Errorf("skip list lacks %q:\n%s", want, got)
		}
	}
	out.Reset()
	if err := listSkips(strings.NewReader(`{"Action":"pass","Package":"p","Test":"T"}`), &out); err != nil || !strings.Contains(out.String(), "No test was skipped") {
		t.Errorf("no skips: %q %v", out.String(), err)
	}
}
