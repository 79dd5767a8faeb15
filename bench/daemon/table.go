package main

import (
	"fmt"
	"io"
	"strings"
)

// verdict says whether a row meets its bar.
type verdict int

const (
	info verdict = iota // no bar
	pass
	fail
)

func verdictOf(ok bool) verdict {
	if ok {
		return pass
	}
	return fail
}

func (v verdict) String() string {
	switch v {
	case pass:
		return "pass"
	case fail:
		return "**FAIL**"
	}
	return ""
}

// row is one line of the result table.
type row struct {
	part, what, value, bar string
	verdict                verdict
}

// printTable writes the rows as a markdown table.
func printTable(w io.Writer, rows []row) {
	fmt.Fprintln(w, "| part | measure | result | bar | verdict |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- |")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", r.part, esc(r.what), esc(r.value), esc(r.bar), r.verdict)
	}
}

func esc(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
