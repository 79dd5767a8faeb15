package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStorageEncryptedStreamedRestore: a process with enough memory to be
// streamed (its pages go from the store into CRIU in one pass, decrypted
// on the way; see archive.SequentialSource) is dumped encrypted into a
// shared directory. Ciphertext flipped in the middle or three quarters in
// — detected only when the pass reaches it, while CRIU is already reading
// pages; the pages entry is not hashed again, its chunks' AES-GCM tags are
// the check — or in the last chunk (the archive's index, opened first),
// and another key are refused, exit 4 / 8, and nothing runs; the intact
// object restores with its memory whole.
func TestStorageEncryptedStreamedRestore(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	keys := t.TempDir()
	key, other := filepath.Join(keys, "key"), filepath.Join(keys, "other")
	for _, k := range []string{key, other} {
		if r := e.cedana("storage", "keygen", k); r.code != 0 {
			t.Fatalf("storage keygen: %s", r)
		}
	}
	withKey := func(k string) []string { return []string{"CEDANA_STORAGE_ENCRYPTION_KEY_FILE=" + k} }
	shared := t.TempDir()
	ctr := filepath.Join(t.TempDir(), "counter")
	p := start(t, "python3", "-c", memCounterScript(ctr, 80))
	eventually(t, 10*time.Second, "counter to reach 3", func() bool { n, _ := readMemCounter(ctr); return n >= 3 })
	r := e.cedanaWith(withKey(key), "client", "dump", "-p", itoa(p.pid()), "-d", "file://"+shared)
	if r.code != 0 {
		t.Fatalf("encrypted dump: %s", r)
	}
	loc := r.stdout
	p.waitExit(t, 5*time.Second)
	before, digest := readMemCounter(ctr)
	stored, err := os.ReadFile(loc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(stored, []byte("CDNAENC1")) || len(stored) < 40<<20 {
		t.Fatalf("%s: %d bytes starting %q; want an encrypted archive of the 80 MiB", loc, len(stored), stored[:min(8, len(stored))])
	}

	nothingRestored := func(what string) {
		t.Helper()
		time.Sleep(300 * time.Millisecond)
		if n, _ := readMemCounter(ctr); n != before {
			t.Fatalf("%s: the counter moved from %d to %d: something was restored", what, before, n)
		}
	}
	for _, at := range []int{len(stored) / 2, len(stored) * 3 / 4, len(stored) - 100} {
		bad := bytes.Clone(stored)
		bad[at] ^= 0x20
		if err := os.WriteFile(loc, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		r = e.cedanaWith(withKey(key), "-v", "client", "restore", loc)
		if r.code != 4 || !strings.Contains(r.stderr, "tampered") {
			t.Fatalf("restore with byte %d of %d flipped: %s; want exit 4 saying it was tampered with", at, len(stored), r)
		}
		if at != len(stored)-100 && !strings.Contains(r.stderr, "stream=true") {
			t.Fatalf("the restore did not stream the pages (no stream=true in its log): %s", r)
		}
		nothingRestored(fmt.Sprintf("byte %d flipped", at))
	}
	if err := os.WriteFile(loc, stored, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := e.cedanaWith(withKey(other), "client", "restore", loc); r.code != 8 || !strings.Contains(r.stderr, "wrong encryption key") {
		t.Fatalf("restore with another key: %s; want exit 8 and \"wrong encryption key\"", r)
	}
	nothingRestored("another key")

	r = e.cedanaWith(withKey(key), "client", "restore", loc)
	if r.code != 0 {
		t.Fatalf("restore with the right key: %s", r)
	}
	pid := 0
	fmt.Sscan(r.stdout, &pid)
	killTreeAtEnd(t, pid)
	checkMemContinues(t, ctr, before, digest)
}
