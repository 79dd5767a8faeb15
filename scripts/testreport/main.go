// Command testreport reads the events of `go test -json` and prints what
// a person (or CI) needs from them, for `make test` (scripts/test.sh).
//
// Without flags it reads events on stdin and prints what `go test`
// without -json prints: each package's closing line (ok, FAIL, "no test
// files"), build errors, and the whole output of every failed test. It
// exits 1 if any test or package failed, so that a pipeline fails even
// where its shell ignores the exit status of go test.
//
// With -skips FILE it reads the events saved in FILE and lists every
// skipped test with the reason it gave, so that a run that skipped tests
// says so at its end instead of passing silently.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output and build-fail events
}

func main() {
	skips := flag.String("skips", "", "list the skipped tests recorded in this file of go test -json events")
	flag.Parse()
	if *skips != "" {
		f, err := os.Open(*skips)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testreport:", err)
			os.Exit(2)
		}
		defer f.Close()
		if err := listSkips(f, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "testreport:", err)
			os.Exit(2)
		}
		return
	}
	failed, err := passThrough(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

// decode calls fn for every event of r. Lines that are not JSON (go
// test's own messages on a broken setup) are passed as output events
// without a test.
func decode(r io.Reader, fn func(event)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fn(event{Action: "output", Output: string(line) + "\n"})
			continue
		}
		fn(e)
	}
	return sc.Err()
}

// passThrough prints package results, build errors and failed tests'
// output, and reports whether anything failed.
func passThrough(r io.Reader, w io.Writer) (bool, error) {
	type key struct{ pkg, test string }
	buffered := map[key][]string{}
	failed := false
	err := decode(r, func(e event) {
		k := key{e.Package, e.Test}
		switch {
		case e.Action == "build-output":
			io.WriteString(w, e.Output)
		case e.Action == "build-fail":
			failed = true
		case e.Test == "":
			// go test prints a package's bare "PASS" only with -v.
			if e.Action == "output" && e.Output != "PASS\n" {
				io.WriteString(w, e.Output)
			}
			if e.Action == "fail" {
				failed = true
			}
		case e.Action == "output":
			buffered[k] = append(buffered[k], e.Output)
		case e.Action == "fail":
			failed = true
			io.WriteString(w, strings.Join(buffered[k], ""))
			delete(buffered, k)
		case e.Action == "pass" || e.Action == "skip":
			delete(buffered, k)
		}
	})
	return failed, err
}

// skip is one skipped test and why.
type skip struct{ pkg, test, reason string }

// listSkips prints the skipped tests recorded in r, with their reasons.
func listSkips(r io.Reader, w io.Writer) error {
	type key struct{ pkg, test string }
	last := map[key]string{} // the last line a test logged
	var skips []skip
	err := decode(r, func(e event) {
		if e.Test == "" {
			return
		}
		k := key{e.Package, e.Test}
		switch e.Action {
		case "output":
			if line := strings.TrimSpace(e.Output); line != "" && !isFrameLine(line) {
				last[k] = line
			}
		case "skip":
			skips = append(skips, skip{e.Package, e.Test, last[k]})
			delete(last, k)
		case "pass", "fail":
			delete(last, k)
		}
	})
	if err != nil {
		return err
	}
	if len(skips) == 0 {
		fmt.Fprintln(w, "No test was skipped.")
		return nil
	}
	sort.Slice(skips, func(i, j int) bool {
		if skips[i].pkg != skips[j].pkg {
			return skips[i].pkg < skips[j].pkg
		}
		return skips[i].test < skips[j].test
	})
	fmt.Fprintf(w, "Skipped tests (%d):\n", len(skips))
	for _, s := range skips {
		reason := s.reason
		if reason == "" {
			reason = "(no reason given)"
		}
		fmt.Fprintf(w, "  %s %s: %s\n", s.pkg, s.test, reason)
	}
	return nil
}

// isFrameLine reports whether line is go test's own bookkeeping rather
// than something the test logged.
func isFrameLine(line string) bool {
	for _, p := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME", "--- SKIP", "--- PASS", "--- FAIL"} {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}
