package integration

// Checkpoints in storage beyond the local disk (issue 11): real processes
// dumped to and restored from a real S3 server (versitygw), a real NATS
// JetStream object store and a shared directory, with and without
// encryption, and the faults that must fail cleanly.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const itBucket = "ckpts"

// storageCase is one backend a test dumps to: where -d points, and the
// environment the CLI needs for it.
type storageCase struct {
	name string
	dest func(t *testing.T) (dest string, env []string)
}

func storageCases() []storageCase {
	return []storageCase{
		{"s3", func(t *testing.T) (string, []string) {
			s := startS3(t, itBucket)
			return "s3://" + itBucket + "/it", s.s3Env()
		}},
		{"jetstream", func(t *testing.T) (string, []string) {
			s := startJetStream(t)
			// The URL names the server; the password comes from the
			// configured URL, as a user would keep it out of commands.
			return "nats://" + s.addr + "/" + itBucket + "?create=true",
				[]string{"CEDANA_STORAGE_JETSTREAM_URL=" + s.natsURL()}
		}},
		{"dir", func(t *testing.T) (string, []string) {
			return "file://" + t.TempDir(), nil
		}},
	}
}

// TestStorageDumpRestore: a process holding 80 MiB is dumped into each
// backend and restored from it by its location; memory and counter
// continue (the pages stream through ranged reads, verified on the way).
func TestStorageDumpRestore(t *testing.T) {
	requireCRIU(t)
	for _, sc := range storageCases() {
		t.Run(sc.name, func(t *testing.T) {
			dest, senv := sc.dest(t)
			e := newEnv(t)
			ctr := filepath.Join(t.TempDir(), "counter")
			p := start(t, "python3", "-c", memCounterScript(ctr, 80))
			eventually(t, 10*time.Second, "counter to reach 3", func() bool { n, _ := readMemCounter(ctr); return n >= 3 })
			r := e.cedanaWith(senv, "client", "dump", "-p", itoa(p.pid()), "-d", dest)
			if r.code != 0 {
				t.Fatalf("dump to %s: %s", dest, r)
			}
			loc := r.stdout
			noSecret(t, r)
			if sc.name != "dir" && !strings.HasPrefix(loc, strings.SplitN(dest, ":", 2)[0]+"://") {
				t.Fatalf("dump printed %q; want a location in %s", loc, dest)
			}
			if _, err := os.Stat(e.dir); err == nil {
				t.Errorf("the dump left something in the local dump directory %s", e.dir)
			}
			p.waitExit(t, 5*time.Second)
			before, digest := readMemCounter(ctr)

			if r := e.cedanaWith(senv, "inspect", "--verify", loc); r.code != 0 || !strings.Contains(r.stdout, "all entries verified") {
				t.Fatalf("inspect --verify %s: %s", loc, r)
			}
			r = e.cedanaWith(senv, "client", "restore", loc)
			if r.code != 0 {
				t.Fatalf("restore from %s: %s", loc, r)
			}
			pid := 0
			fmt.Sscan(r.stdout, &pid)
			killTreeAtEnd(t, pid)
			checkMemContinues(t, ctr, before, digest)
		})
	}
}

// TestStorageEncryption: with storage.encryption.key_file, archives in a
// non-local store are encrypted; the right key restores, a wrong key, no
// key and a tampered object are refused before anything is restored.
func TestStorageEncryption(t *testing.T) {
	requireCRIU(t)
	s := startS3(t, itBucket)
	e := newEnv(t)
	keys := t.TempDir()
	key, other := filepath.Join(keys, "key"), filepath.Join(keys, "other")
	for _, k := range []string{key, other} {
		if r := e.cedana("storage", "keygen", k); r.code != 0 || !strings.HasPrefix(r.stdout, "age1") {
			t.Fatalf("storage keygen: %s", r)
		}
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v (%v), want 0600", st.Mode(), err)
	}
	orig, _ := os.ReadFile(key)
	if r := e.cedana("storage", "keygen", key); r.code == 0 || !strings.Contains(r.stderr, "refusing to overwrite") {
		t.Fatalf("keygen over an existing key: %s", r)
	}
	if now, _ := os.ReadFile(key); !bytes.Equal(now, orig) {
		t.Fatal("keygen changed an existing key file")
	}

	withKey := func(k string) []string { return append(s.s3Env(), "CEDANA_STORAGE_ENCRYPTION_KEY_FILE="+k) }
	ctr := filepath.Join(t.TempDir(), "counter")
	p := start(t, "bash", "-c", counterScript(ctr))
	eventually(t, 10*time.Second, "counter to reach 3", func() bool { return readCounter(ctr) >= 3 })
	r := e.cedanaWith(withKey(key), "client", "dump", "-p", itoa(p.pid()), "-d", "s3://"+itBucket+"/enc")
	if r.code != 0 {
		t.Fatalf("encrypted dump: %s", r)
	}
	noSecret(t, r)
	loc := r.stdout
	p.waitExit(t, 5*time.Second)
	before := readCounter(ctr)
	objs := s.objects(itBucket)
	if len(objs) != 1 {
		t.Fatalf("objects in the bucket: %v, want the one archive", objs)
	}
	objPath := filepath.Join(s.data, itBucket, objs[0])
	stored, err := os.ReadFile(objPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(stored, []byte("CDNAENC1")) || bytes.Contains(stored, []byte("manifest.json")) {
		t.Fatalf("the stored object is not encrypted (starts %q)", stored[:min(16, len(stored))])
	}

	// nothingRestored checks that a refused restore left nothing running:
	// the counter stays where the dump left it.
	nothingRestored := func(what string) {
		t.Helper()
		time.Sleep(300 * time.Millisecond)
		if n := readCounter(ctr); n != before {
			t.Fatalf("%s: the counter moved from %d to %d: something was restored", what, before, n)
		}
	}
	r = e.cedanaWith(withKey(other), "client", "restore", loc)
	if r.code != 8 || !strings.Contains(r.stderr, "wrong encryption key") {
		t.Fatalf("restore with another key: %s; want exit 8 and \"wrong encryption key\"", r)
	}
	noSecret(t, r)
	nothingRestored("wrong key")
	r = e.cedanaWith(s.s3Env(), "client", "restore", loc)
	if r.code != 8 || !strings.Contains(r.stderr, "storage.encryption.key_file") {
		t.Fatalf("restore without a key: %s; want exit 8 naming storage.encryption.key_file", r)
	}
	nothingRestored("no key")

	// Tampering: one flipped byte in the middle of the object.
	bad := bytes.Clone(stored)
	bad[len(bad)/2] ^= 0x01
	if err := os.WriteFile(objPath, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	r = e.cedanaWith(withKey(key), "client", "restore", loc)
	if r.code != 4 || !strings.Contains(r.stderr, "tampered") {
		t.Fatalf("restore of a tampered object: %s; want exit 4 saying it was tampered with", r)
	}
	nothingRestored("tampered object")
	if err := os.WriteFile(objPath, stored, 0o600); err != nil {
		t.Fatal(err)
	}

	r = e.cedanaWith(withKey(key), "client", "restore", loc)
	if r.code != 0 {
		t.Fatalf("restore with the right key: %s", r)
	}
	pid := 0
	fmt.Sscan(r.stdout, &pid)
	killTreeAtEnd(t, pid)
	checkContinues(t, ctr, before)

	// A shared directory is a non-local backend too: encrypted on disk,
	// restored by its plain path.
	shared := t.TempDir()
	r = e.cedanaWith(withKey(key), "client", "dump", "-p", itoa(pid), "-d", "file://"+shared)
	if r.code != 0 {
		t.Fatalf("encrypted dump to a directory: %s", r)
	}
	waitGone(t, pid, 5*time.Second)
	before = readCounter(ctr)
	if data, _ := os.ReadFile(r.stdout); !bytes.HasPrefix(data, []byte("CDNAENC1")) {
		t.Fatalf("%s is not encrypted", r.stdout)
	}
	if r := e.cedanaWith(withKey(other), "client", "restore", r.stdout); r.code != 8 {
		t.Fatalf("restore of an encrypted file with another key: %s", r)
	}
	r = e.cedanaWith(withKey(key), "client", "restore", r.stdout)
	if r.code != 0 {
		t.Fatalf("restore of an encrypted file: %s", r)
	}
	fmt.Sscan(r.stdout, &pid)
	killTreeAtEnd(t, pid)
	checkContinues(t, ctr, before)
}

// TestStorageFailures: wrong credentials, a missing bucket, a store that
// is not running: a clear error naming the store and the fix, exit 8, and
// the process keeps running.
func TestStorageFailures(t *testing.T) {
	requireCRIU(t)
	s := startS3(t, itBucket)
	js := startJetStream(t)
	e := newEnv(t)
	ctr := filepath.Join(t.TempDir(), "counter")
	p := start(t, "bash", "-c", counterScript(ctr))
	eventually(t, 10*time.Second, "counter to reach 3", func() bool { return readCounter(ctr) >= 3 })
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	for _, tc := range []struct {
		name, dest string
		env        []string
		want       []string
	}{
		{"wrong S3 secret", "s3://" + itBucket + "/x",
			append(s.s3Env(), "AWS_SECRET_ACCESS_KEY=wrong-secret"), []string{"s3://" + itBucket, "access denied", "AWS_SECRET_ACCESS_KEY"}},
		{"missing bucket", "s3://nosuchbucket/x", s.s3Env(), []string{"s3://nosuchbucket", "create the bucket"}},
		{"S3 not running", "s3://" + itBucket + "/x",
			append(s.s3Env(), "CEDANA_STORAGE_S3_ENDPOINT=http://"+dead), []string{"unreachable", "storage.s3.endpoint"}},
		{"wrong NATS password", fmt.Sprintf("nats://%s:wrong@%s/%s?create=true", natsUser, js.addr, itBucket), nil,
			[]string{"access denied", "storage.jetstream.url"}},
		{"missing object store", fmt.Sprintf("nats://%s/nosuchstore", js.addr), []string{"CEDANA_STORAGE_JETSTREAM_URL=" + js.natsURL()},
			[]string{"nosuchstore"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.cedanaWith(tc.env, "client", "dump", "-p", itoa(p.pid()), "-d", tc.dest)
			if r.code != 8 {
				t.Fatalf("dump: %s; want exit 8", r)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("message lacks %q: %s", w, r.stderr)
				}
			}
			noSecret(t, r)
			if !p.running() {
				t.Fatal("the process died")
			}
			checkContinues(t, ctr, readCounter(ctr))
		})
	}
	if objs := s.objects(itBucket); len(objs) != 0 {
		t.Errorf("failed dumps left objects: %v", objs)
	}
}

// TestStorageServerKilledMidUpload: the S3 server dies while a large
// archive is being uploaded. The dump fails, the process keeps running
// (its state intact), and once the server is back nothing that looks
// like a checkpoint is in the bucket.
func TestStorageServerKilledMidUpload(t *testing.T) {
	requireCRIU(t)
	s := startS3(t, itBucket)
	e := newEnv(t)
	ctr := filepath.Join(t.TempDir(), "counter")
	p := start(t, "python3", "-c", memCounterScript(ctr, 320))
	eventually(t, 30*time.Second, "counter to reach 3", func() bool { n, _ := readMemCounter(ctr); return n >= 3 })
	base := s.dataBytes()

	cmd := exec.Command(cedanaBin, "client", "dump", "-p", itoa(p.pid()), "-d", "s3://"+itBucket+"/big")
	cmd.Env = append(append(os.Environ(), "HOME="+e.home), s.s3Env()...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Kill the server once two parts (32 MiB) have arrived.
	eventually(t, 60*time.Second, "the upload to be under way", func() bool { return s.dataBytes()-base > 32<<20 })
	s.stop()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("the dump succeeded although the server died mid-upload:\n%s", out.String())
		}
		if code := cmd.ProcessState.ExitCode(); code != 8 {
			t.Errorf("exit %d, want 8 (storage); output:\n%s", code, out.String())
		}
		if !strings.Contains(out.String(), "still running") {
			t.Errorf("the message does not say the process is still running:\n%s", out.String())
		}
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatal("the dump hung after the server died")
	}
	if !p.running() {
		t.Fatal("the process died with the failed upload")
	}
	n, digest := readMemCounter(ctr)
	checkMemContinues(t, ctr, n, digest)

	s.start() // the same data directory: what the killed upload left
	if objs := s.objects(itBucket); len(objs) != 0 {
		t.Fatalf("an interrupted upload left an archive: %v", objs)
	}
}

// TestStorageDaemonS3: a daemon with storage.backend s3 writes its jobs'
// periodic checkpoints to the bucket, and retention deletes the pruned
// ones from it (what is listed is exactly what is in the bucket). A job
// checkpointed there is restored from it with its state. A failed upload
// (the server gone) leaves the job running and the previous checkpoint as
// its latest.
func TestStorageDaemonS3(t *testing.T) {
	s := startS3(t, itBucket)
	d := startDaemon(t, daemonOpts{
		Env: s.s3Env()[:2], // credentials only the AWS way: the environment
		Config: map[string]any{"storage": map[string]any{"backend": "s3",
			"s3": map[string]any{"endpoint": "http://" + s.addr, "bucket": itBucket, "region": "us-east-1",
				"prefix": "cedana", "path_style": true}}},
	})
	ctr := filepath.Join(t.TempDir(), "counter")
	j := d.runJob("s3job", []string{"--checkpoint-every", "1s", "--keep", "2"}, "bash", "-c", counterScript(ctr))
	prefix := "s3://" + itBucket + "/cedana/jobs/" + j.ID + "/"

	seen := map[string]bool{}
	// At least 6 s, until three distinct checkpoints were seen (a loaded
	// machine takes longer than the 1 s interval per dump), at most 30 s.
	start, deadline := time.Now(), time.Now().Add(30*time.Second)
	for time.Now().Before(deadline) && (len(seen) < 3 || time.Since(start) < 6*time.Second) {
		cs := complete(d.checkpoints("s3job"))
		if len(cs) > 2 {
			t.Fatalf("%d complete checkpoints listed with --keep 2", len(cs))
		}
		for _, c := range cs {
			if !strings.HasPrefix(c.Path, prefix) {
				t.Fatalf("checkpoint at %q; want it in %s", c.Path, prefix)
			}
			seen[c.Path] = true
		}
		time.Sleep(150 * time.Millisecond)
	}
	if len(seen) < 3 {
		t.Fatalf("only %d distinct checkpoints in 30 s at 1 s intervals", len(seen))
	}
	// Stop the periodic checkpoints, then compare the list with the bucket.
	d.ok("policy", "s3job", "--checkpoint-every", "0")
	time.Sleep(1500 * time.Millisecond)
	cs := complete(d.checkpoints("s3job"))
	if len(cs) == 0 || len(cs) > 2 {
		t.Fatalf("%d complete checkpoints after retention, want 1 or 2: %+v", len(cs), cs)
	}
	inBucket := map[string]bool{}
	for _, o := range s.objects(itBucket) {
		inBucket["s3://"+itBucket+"/"+o] = true
	}
	for _, c := range cs {
		if !inBucket[c.Path] {
			t.Errorf("listed checkpoint %s is not in the bucket (%v)", c.Path, inBucket)
		}
		delete(inBucket, c.Path)
	}
	if len(inBucket) > 0 {
		t.Errorf("retention left pruned archives in the bucket: %v", inBucket)
	}
	if r := d.ok("checkpoints", "s3job"); !strings.Contains(r.stdout, prefix) {
		t.Errorf("`cedana checkpoints` does not show where the checkpoints live:\n%s", r.stdout)
	}

	// Checkpoint and stop, restore from the bucket: the state continues.
	c := d.dumpJob("s3job")
	if !strings.HasPrefix(c.Path, prefix) {
		t.Fatalf("checkpoint at %s, want it in %s", c.Path, prefix)
	}
	waitGone(t, j.PID, 10*time.Second)
	before := readCounter(ctr)
	r := d.restoreJob("s3job")
	checkContinues(t, ctr, before)
	last := d.job("s3job").LastCheckpointID

	// The store goes away: the checkpoint fails, the job keeps running,
	// and the latest checkpoint is still the previous one.
	s.stop()
	f := d.cli("dump", "job", "s3job", "--leave-running")
	if f.code == 0 || !strings.Contains(f.stderr, "s3://"+itBucket) {
		t.Fatalf("dump with the store down: %s; want a failure naming the store", f)
	}
	noSecret(t, f)
	jj := d.waitJob("s3job", 10*time.Second, "running", func(j jobInfo) bool { return j.State == "running" })
	if jj.PID != r.PID || !alive(r.PID) {
		t.Fatalf("the job is not the restored process any more: %+v (restored PID %d)", jj, r.PID)
	}
	if jj.LastCheckpointID != last {
		t.Fatalf("latest checkpoint %s after a failed upload, want %s", jj.LastCheckpointID, last)
	}
	checkContinues(t, ctr, readCounter(ctr))
}
