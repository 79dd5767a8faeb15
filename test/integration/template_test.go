package integration

// Warm templates: a slow-starting Python HTTP service is made a template
// once, then cloned; every clone runs in its own PID and network
// namespace and answers with the template's digest. Unsafe templates
// (an established TCP connection, a binary changed on disk) are refused
// before anything starts.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cloneReport is what `run --from-template -o json` prints.
type cloneReport struct {
	Clones []struct {
		Job struct {
			ID      string `json:"id"`
			Name    string `json:"name"`
			State   string `json:"state"`
			PID     int    `json:"pid"`
			Address string `json:"address"`
			Tmpl    string `json:"template"`
		} `json:"job"`
		ReadyUs    string `json:"ready_us"`
		RSSAtReady string `json:"rss_at_ready_bytes"`
		Error      string `json:"error"`
	} `json:"clones"`
	CacheHit bool   `json:"cache_hit"`
	Prepare  string `json:"prepare_us"`
}

// slowService returns the argv of the test service on port.
func slowService(t *testing.T, python string, port int, secs float64, mib int) []string {
	_, self, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(self), "testdata", "slowsvc.py")
	return []string{python, script, strconv.Itoa(port), strconv.FormatFloat(secs, 'f', -1, 64), strconv.Itoa(mib)}
}

// httpGet returns the body of GET url, or "" after timeout.
func getBody(url string, timeout time.Duration) string {
	c := http.Client{Timeout: timeout}
	resp, err := c.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

// waitAnswer polls url until it answers and returns the answer.
func waitAnswer(t *testing.T, url string, timeout time.Duration) string {
	t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if s := getBody(url, time.Second); s != "" {
			return s
		}
	}
	t.Fatalf("%s did not answer within %v", url, timeout)
	return ""
}

// killClonesAtEnd kills (through the daemon, which removes their network
// namespaces) every clone of the test before the daemon stops.
func killClonesAtEnd(t *testing.T, d *testDaemon) {
	t.Cleanup(func() {
		r := d.cli("ps", "-o", "json")
		var js []struct {
			Name, State, Template string
		}
		if json.Unmarshal([]byte(r.stdout), &js) != nil {
			return
		}
		for _, j := range js {
			if j.Template != "" && j.State == "running" {
				d.cli("kill", j.Name)
			}
		}
	})
}

func startClones(t *testing.T, d *testDaemon, args ...string) cloneReport {
	t.Helper()
	r := d.ok(append([]string{"run", "-o", "json"}, args...)...)
	var rep cloneReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("run --from-template -o json: %v\n%s", err, r.stdout)
	}
	for _, c := range rep.Clones {
		d.track(c.Job.PID)
		d.trackJobs([]jobInfo{{ID: c.Job.ID, Name: c.Job.Name, State: c.Job.State, PID: c.Job.PID}})
		if c.Error != "" {
			t.Fatalf("clone %s: %s", c.Job.Name, c.Error)
		}
	}
	return rep
}

func requireTemplates(t *testing.T) string {
	t.Helper()
	requireCRIU(t)
	requireBinary(t, "ip")
	return requireBinary(t, "python3")
}

func TestTemplateClones(t *testing.T) {
	python := requireTemplates(t)
	d := startDaemon(t, daemonOpts{})
	killClonesAtEnd(t, d)
	port := freePort(t)
	start := time.Now()
	d.runJob("svc", []string{"--pid-namespace"}, slowService(t, python, port, 3, 0)...)
	want := waitAnswer(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/", 60*time.Second)
	cold := time.Since(start)
	d.ok("template", "create", "web", "--job", "svc")
	if j := d.job("svc"); j.State != "running" {
		t.Fatalf("the template's source stopped: %+v", j)
	}
	var ts []struct {
		Name   string  `json:"name"`
		Listen []int32 `json:"listen"`
	}
	if err := json.Unmarshal([]byte(d.ok("template", "ls", "-o", "json").stdout), &ts); err != nil || len(ts) != 1 || ts[0].Name != "web" || len(ts[0].Listen) != 1 || int(ts[0].Listen[0]) != port {
		t.Fatalf("template ls: %v %+v", err, ts)
	}

	rep := startClones(t, d, "--from-template", "web", "--count", "5", "--ready", "http:/")
	if len(rep.Clones) != 5 {
		t.Fatalf("want 5 clones, got %+v", rep)
	}
	seen := map[string]bool{}
	for _, c := range rep.Clones {
		a := c.Job.Address
		if a == "" || seen[a] {
			t.Fatalf("clone %s has no address of its own: %+v", c.Job.Name, rep)
		}
		seen[a] = true
		if got := getBody("http://"+hostPort(a, port)+"/", 5*time.Second); got != want {
			t.Fatalf("clone %s at %s answered %q, want the template's digest %q", c.Job.Name, a, got, want)
		}
		us, _ := strconv.ParseInt(c.ReadyUs, 10, 64)
		t.Logf("clone %s (PID %d) at %s: ready in %v (cold start took %v)", c.Job.Name, c.Job.PID, a, time.Duration(us)*time.Microsecond, cold.Round(time.Millisecond))
		if !strings.HasPrefix(readFile("/proc/"+strconv.Itoa(c.Job.PID)+"/status", "NSpid:"), "NSpid:") {
			t.Fatalf("clone %s: no NSpid", c.Job.Name)
		}
		if f := strings.Fields(readFile("/proc/"+strconv.Itoa(c.Job.PID)+"/status", "NSpid:")); f[len(f)-1] != "1" {
			t.Fatalf("clone %s is not the init of its own PID namespace: %v", c.Job.Name, f)
		}
	}
	// ps shows the addresses.
	var js []struct{ Name, Address string }
	_ = json.Unmarshal([]byte(d.ok("ps", "-o", "json").stdout), &js)
	for _, j := range js {
		if strings.HasPrefix(j.Name, "web-") && !seen[j.Address] {
			t.Fatalf("ps -o json: clone %s has address %q", j.Name, j.Address)
		}
	}

	// Kill one clone: the others keep answering, its namespace goes.
	victim := rep.Clones[0]
	victimNS := netnsOf(t, victim.Job.PID)
	if victimNS == "" {
		t.Fatalf("clone %s runs in no namespace of /run/netns", victim.Job.Name)
	}
	if err := syscall.Kill(victim.Job.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.waitJob(victim.Job.Name, 10*time.Second, "dead", func(j jobInfo) bool { return j.State != "running" })
	eventually(t, 5*time.Second, "the dead clone's network namespace is removed", func() bool {
		_, err := os.Stat("/run/netns/" + victimNS)
		return os.IsNotExist(err)
	})
	for _, c := range rep.Clones[1:] {
		if got := getBody("http://"+hostPort(c.Job.Address, port)+"/", 5*time.Second); got != want {
			t.Fatalf("after a sibling died, clone %s answered %q", c.Job.Name, got)
		}
	}
	if got := getBody("http://127.0.0.1:"+strconv.Itoa(port)+"/", 5*time.Second); got != want {
		t.Fatalf("the template's source answered %q after cloning", got)
	}
	// A second run reuses the verified, unpacked images; --publish makes
	// the clone reachable on a host port too, until it ends.
	hostPort := freePort(t)
	rep2 := startClones(t, d, "--from-template", "web", "--name", "again", "--ready", "tcp:"+strconv.Itoa(port),
		"--publish", fmt.Sprintf("%d:%d", hostPort, port))
	if !rep2.CacheHit {
		t.Fatalf("the second run did not reuse the template's images: %+v", rep2)
	}
	if got := getBody(fmt.Sprintf("http://127.0.0.1:%d/", hostPort), 5*time.Second); got != want {
		t.Fatalf("the published host port %d answered %q", hostPort, got)
	}
	d.ok("kill", rep2.Clones[0].Job.Name)
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", hostPort), time.Second); err == nil {
		c.Close()
		t.Fatalf("host port %d still accepts after its clone was killed", hostPort)
	}
}

func hostPort(host string, port int) string { return host + ":" + strconv.Itoa(port) }

// readFile returns the line of path starting with prefix ("" if none).
func readFile(path, prefix string) string {
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func TestTemplateRefusesEstablishedTCP(t *testing.T) {
	python := requireTemplates(t)
	d := startDaemon(t, daemonOpts{})
	l := listenTCP(t)
	port := strconv.Itoa(l.port)
	d.runJob("client", []string{"--pid-namespace"}, python, "-c",
		"import socket,time\ns=socket.create_connection(('127.0.0.1',"+port+"))\nwhile True: time.sleep(1)")
	conn := l.accept(t, 10*time.Second)
	defer conn.Close()
	r := d.cli("template", "create", "bad", "--job", "client")
	if r.code == 0 || !strings.Contains(r.stderr, "established TCP connection") {
		t.Fatalf("a template with an established connection was not refused with the reason: %s", r)
	}
	if out := d.ok("template", "ls").stdout; strings.Contains(out, "bad") {
		t.Fatalf("the refused template is listed:\n%s", out)
	}
	if j := d.job("client"); j.State != "running" {
		t.Fatalf("the refused source stopped: %+v", j)
	}
}

// privatePython copies a self-contained python3 into dir, so that the
// test can change "the binary" without touching the system's.
func privatePython(t *testing.T, dir string) string {
	t.Helper()
	for _, cand := range []string{"/usr/bin/python3"} {
		src, err := filepath.EvalSymlinks(cand)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(src)
		if err != nil {
			continue
		}
		dst := filepath.Join(dir, "python3")
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
		if exec.Command(dst, "-c", "pass").Run() == nil {
			return dst
		}
	}
	t.Skip("no self-contained python3 to copy (/usr/bin/python3)")
	return ""
}

func TestTemplateRefusesChangedBinary(t *testing.T) {
	requireTemplates(t)
	py := privatePython(t, t.TempDir())
	d := startDaemon(t, daemonOpts{})
	killClonesAtEnd(t, d)
	port := freePort(t)
	d.runJob("svc", []string{"--pid-namespace"}, slowService(t, py, port, 0.2, 0)...)
	waitAnswer(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/", 30*time.Second)
	d.ok("template", "create", "app", "--job", "svc")
	startClones(t, d, "--from-template", "app", "--ready", "tcp:"+strconv.Itoa(port)) // unchanged: works
	// "A new version" of the binary, installed as package managers do:
	// a new file renamed over the old one (a running binary cannot be
	// written in place).
	b, err := os.ReadFile(py)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(py+".new", append(b, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(py+".new", py); err != nil {
		t.Fatal(err)
	}
	r := d.cli("run", "--from-template", "app", "--name", "after")
	if r.code == 0 || !strings.Contains(r.stderr, py) || !strings.Contains(r.stderr, "changed") {
		t.Fatalf("a clone of a template whose binary changed was not refused with the reason: %s", r)
	}
	for _, j := range d.jobs() {
		if strings.HasPrefix(j.Name, "after") {
			t.Fatalf("a refused clone was created: %+v", j)
		}
	}
}

// TestTemplateLazy1GiB: a clone of a 1 GiB template restored with lazy
// pages answers while most of its memory is still to come.
func TestTemplateLazy1GiB(t *testing.T) {
	python := requireTemplates(t)
	if testing.Short() {
		t.Skip("-short: a 1 GiB template takes a while to dump")
	}
	d := startDaemon(t, daemonOpts{})
	killClonesAtEnd(t, d)
	port := freePort(t)
	d.runJob("big", []string{"--pid-namespace"}, slowService(t, python, port, 0.2, 1024)...)
	waitAnswer(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/", 60*time.Second)
	d.ok("template", "create", "big", "--job", "big")
	d.ok("kill", "big") // 1 GiB less to hold on a small machine
	rep := startClones(t, d, "--from-template", "big", "--lazy", "--ready", "http:/")
	c := rep.Clones[0]
	rss, _ := strconv.ParseInt(c.RSSAtReady, 10, 64)
	us, _ := strconv.ParseInt(c.ReadyUs, 10, 64)
	t.Logf("lazy clone ready in %v with %d MiB resident of the template's ~1 GiB", time.Duration(us)*time.Microsecond, rss>>20)
	// Without lazy pages every page is in before the clone runs (RSS ≥
	// 1 GiB); the lazy-pages server copies the rest in the background
	// meanwhile, so some has arrived by the first answer.
	if rss <= 0 || rss > 768<<20 {
		t.Fatalf("the lazy clone had %d MiB resident when it first answered: its memory was loaded before it ran", rss>>20)
	}
	if got := getBody("http://"+hostPort(c.Job.Address, port)+"/", 30*time.Second); len(got) != 64 {
		t.Fatalf("lazy clone answered %q", got)
	}
}
