// Command httpserver is a Go HTTP server holding state in memory: a
// request counter and a key/value map. Built by the compatibility suite
// with the machine's Go; Go >= 1.24 listens with MPTCP unless
// GODEBUG=multipathtcp=0.
package main

import (
	"fmt"
	"net/http"
	"os"
	"sync"
)

func main() {
	var (
		mu   sync.Mutex
		hits int
		kv   = map[string]string{}
	)
	http.HandleFunc("/hit", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		hits++
		fmt.Fprintln(w, hits)
	})
	http.HandleFunc("/kv", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		k := r.URL.Query().Get("k")
		if v := r.URL.Query().Get("v"); v != "" {
			kv[k] = v
		}
		fmt.Fprintln(w, kv[k])
	})
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
