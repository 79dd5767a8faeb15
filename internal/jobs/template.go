package jobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/storage"
	"github.com/cedana/cedana/internal/store"
	"github.com/cedana/cedana/internal/template"
)

// Cloner is what clones need of the engine beyond Engine
// (internal/checkpoint.Service has it; the lifecycle tests' fake does not).
type Cloner interface {
	RestoreClone(ctx context.Context, req checkpoint.CloneRequest) (*checkpoint.CloneResult, error)
}

var _ Cloner = (*checkpoint.Service)(nil)

// templates is the manager's template side: the store, the node-local
// image cache and the clone network. Built on first use.
type templates struct {
	once  sync.Once
	store *template.Store
	cache *template.Cache
	net   *template.Network

	// shared, when set before first use (SetTemplateStorage), puts
	// templates in a storage backend.
	shared      storage.Backend
	sharedNames template.Names
	node        string

	mu      sync.Mutex
	proxies map[string][]*template.Proxy // --publish, by clone job ID
	// users counts, by template name, the clone runs starting here and
	// the lazy clones still fed from its images; removing marks names
	// being removed here. RemoveTemplate refuses a name in use.
	users    map[string]int
	removing map[string]bool
}

func (m *Manager) tpl() *templates {
	t := &m.templates
	t.once.Do(func() {
		dir := m.cfg.TemplateDir
		if dir == "" {
			dir = filepath.Join(filepath.Dir(m.cfg.CheckpointDir), "templates")
		}
		t.store = template.NewStore(dir)
		switch {
		case t.shared != nil:
			t.store = template.NewSharedStore(dir, t.shared, t.sharedNames, t.node)
		case m.cfg.Storage != nil:
			t.store = template.NewSharedStore(dir, m.cfg.Storage, t.sharedNames, t.node)
		}
		t.cache, t.net = template.NewCache(), template.NewNetwork(dir)
		t.net.SetPoolSize(m.cfg.NetnsPool)
		t.proxies, t.users, t.removing = map[string][]*template.Proxy{}, map[string]int{}, map[string]bool{}
	})
	return t
}

// SetTemplateStorage puts templates in backend b (a cluster's shared
// store; nil: Config.Storage) with names reserved cluster-wide through
// names; node is this node's name. It must be called before Start.
// Without it templates live in Config.Storage when set, else under the
// state directory.
func (m *Manager) SetTemplateStorage(b storage.Backend, names template.Names, node string) {
	m.templates.shared, m.templates.sharedNames, m.templates.node = b, names, node
}

// use counts a user of template name (a clone run, a lazy clone) until
// release; it fails while the template is being removed here.
func (ts *templates) use(name string) (release func(), err error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.removing[name] {
		return nil, fmt.Errorf("%w: template %s is being removed", template.ErrNotFound, name)
	}
	ts.users[name]++
	var once sync.Once
	return func() {
		once.Do(func() {
			ts.mu.Lock()
			if ts.users[name]--; ts.users[name] <= 0 {
				delete(ts.users, name)
			}
			ts.mu.Unlock()
		})
	}, nil
}

// TemplateSource is what a template is made from: a job, a PID or an
// archive file (exactly one).
type TemplateSource struct {
	Job  string
	PID  int
	File string
}

// CreateTemplate makes template name from src. A job or PID keeps
// running (the dump leaves it running); it must be the init of its own
// PID namespace, and hold nothing clones could not share (see
// template.ScanTree), which is checked before anything is dumped.
func (m *Manager) CreateTemplate(ctx context.Context, name string, src TemplateSource) (*template.Template, error) {
	n := 0
	for _, set := range []bool{src.Job != "", src.PID != 0, src.File != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("%w: give exactly one of a job, a PID or an archive file", template.ErrInvalid)
	}
	if err := template.ValidName(name); err != nil {
		return nil, err
	}
	ts := m.tpl()
	// A taken name is said first (Begin still decides, atomically).
	if t, err := ts.store.Get(ctx, name); err == nil {
		return nil, fmt.Errorf("%w: %s in %s (remove it first: cedana template rm %s)", template.ErrExists, name, ts.store.Where(), t.Name)
	}
	if src.File != "" {
		return m.templateFromFile(ctx, name, src.File)
	}
	pid, source := src.PID, fmt.Sprintf("PID %d", src.PID)
	var job *store.Job
	if src.Job != "" {
		j, err := m.store.GetJob(ctx, src.Job)
		if err != nil {
			return nil, err
		}
		if j.Runtime != "" {
			return m.templateFromContainer(ctx, name, j)
		}
		// The job shows as dumping meanwhile: no other checkpoint starts.
		if job, err = m.transition(ctx, j.ID, "dump", Dumping, func(j *store.Job) { j.DumpLeaveRunning = true }); err != nil {
			return nil, err
		}
		defer m.setState(job.ID, Running, "")
		pid, source = job.PID, "job "+job.Name
	}
	if err := nsInit(pid); err != nil {
		return nil, err
	}
	scan, err := template.ScanTree(pid)
	if err != nil {
		return nil, err
	}
	if err := scan.Err(); err != nil {
		return nil, err
	}
	d, err := ts.store.Begin(ctx, name)
	if err != nil {
		return nil, err
	}
	no := false
	req := checkpoint.DumpRequest{PID: pid, Path: d.Path, LeaveRunning: true, TCPEstablished: &no}
	if d.Key != "" {
		req.Path, req.Storage, req.Key = "", ts.store.Backend(), d.Key
	}
	res, err := m.engine.Dump(ctx, req)
	if err != nil {
		ts.store.Abort(d)
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	t := &template.Template{Name: name, Created: res.Manifest.Created, Source: source, Kind: "process", Size: res.Size,
		RSS: scan.RSS, Processes: scan.Processes, Listen: scan.Listen, Outputs: scan.Outputs, Executables: scan.Executables,
		Digest: template.ContentDigest(res.Manifest)}
	if err := ts.store.Commit(ctx, d, t); err != nil {
		ts.store.Abort(d)
		return nil, err
	}
	if job != nil {
		m.event(job.ID, "template", "template %s made (%d bytes) in %s", name, res.Size, ts.store.Where())
	}
	return m.warmTemplate(t)
}

// warmTemplate returns the template just committed and, in the
// background, unpacks and verifies its images into the cache, so that
// even the first clone does not pay for it (a clone that comes earlier
// waits for the same work). It does not read the template back: a
// replicated store may answer from a replica a moment behind.
func (m *Manager) warmTemplate(t *template.Template) (*template.Template, error) {
	ts, name := m.tpl(), t.Name
	if len(t.Listen) > 0 {
		ts.net.Fill() // its clones will want network namespaces
	}
	// Not counted as a user: a removal meanwhile only makes this fail.
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		_, _, _, done, err := ts.cache.Images(m.ctx, ts.store, t)
		if err != nil {
			m.log.Warn("prepare the template's images", "template", name, "err", err)
			return
		}
		done()
	}()
	return t, nil
}

// nsInit refuses a tree that is not the init of its own PID namespace.
func nsInit(pid int) error {
	b, err := os.ReadFile(filepath.Join(proc.Root, strconv.Itoa(pid), "status"))
	if err != nil {
		return fmt.Errorf("%w: no process with PID %d", template.ErrInvalid, pid)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(v)
			if len(f) >= 2 && f[len(f)-1] == "1" {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: PID %d is not the init of its own PID namespace, so its clones would all need its PIDs; start the service with `cedana run --pid-namespace` (or `unshare --pid --fork`)", template.ErrInvalid, pid)
}

// templateFromFile imports a checkpoint archive as a template.
func (m *Manager) templateFromFile(ctx context.Context, name, file string) (*template.Template, error) {
	ts := m.tpl()
	r, err := archive.Open(file, archive.DefaultLimits())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	mf := r.Manifest
	r.Close()
	if mf.Kind != "" && mf.Kind != "process" {
		return nil, fmt.Errorf("%w: %s holds a %s container; a container template is made from a managed runc container (cedana manage runc ID, then template create NAME --job JOB)", template.ErrInvalid, file, mf.Kind)
	}
	if !mf.PIDNamespace {
		return nil, fmt.Errorf("%w: %s: the checkpointed tree was not the init of its own PID namespace, so its clones would all need its PIDs; checkpoint a service started with `cedana run --pid-namespace`", template.ErrInvalid, file)
	}
	scan := template.ScanManifest(mf)
	if len(mf.CarriedFiles) > 0 {
		scan.Hazards = append(scan.Hazards, fmt.Sprintf("the checkpoint carries %d file(s) open for writing (e.g. %s): every clone would write into the same file", len(mf.CarriedFiles), mf.CarriedFiles[0].Path))
	}
	if err := scan.Err(); err != nil {
		return nil, err
	}
	d, err := ts.store.Begin(ctx, name)
	if err != nil {
		return nil, err
	}
	var size int64
	if d.Key != "" {
		size, err = upload(ctx, ts.store.Backend(), d.Key, file)
	} else {
		size, err = linkOrCopy(file, d.Path)
	}
	if err != nil {
		ts.store.Abort(d)
		return nil, fmt.Errorf("template %s: import %s: %w", name, file, err)
	}
	t := &template.Template{Name: name, Created: mf.Created, Source: "file " + file, Kind: "process", Size: size,
		RSS: scan.RSS, Processes: scan.Processes, Listen: scan.Listen, Outputs: scan.Outputs, Executables: scan.Executables,
		Digest: template.ContentDigest(mf)}
	if err := ts.store.Commit(ctx, d, t); err != nil {
		ts.store.Abort(d)
		return nil, err
	}
	return m.warmTemplate(t)
}

// upload copies the archive file into backend b under key.
func upload(ctx context.Context, b storage.Backend, key, file string) (int64, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), storage.Put(ctx, b, key, f)
}

// linkOrCopy puts src at dst: a hard link when both are on one file
// system (archives are never modified in place), else a copy.
func linkOrCopy(src, dst string) (int64, error) {
	if err := os.Link(src, dst); err == nil {
		st, err := os.Stat(dst)
		if err != nil {
			return 0, err
		}
		return st.Size(), nil
	}
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// Templates lists the templates (every node's, when they are shared),
// and drops this node's cached images of shared templates removed since.
func (m *Manager) Templates(ctx context.Context) ([]*template.Template, error) {
	ts := m.tpl()
	list, err := ts.store.List(ctx)
	if err != nil {
		return nil, err
	}
	keep := map[string]bool{}
	for _, t := range list {
		keep[t.Digest] = true
	}
	ts.cache.Prune(ts.store, keep)
	return list, nil
}

// RemoveTemplate deletes a template; its running clones go on. It is
// refused while clones of it are being started on this node (or lazy
// clones still read its images); on other nodes, a clone whose images
// were not yet fetched fails with the reason, before anything starts.
func (m *Manager) RemoveTemplate(ctx context.Context, name string) error {
	ts := m.tpl()
	ts.mu.Lock()
	if n := ts.users[name]; n > 0 || ts.removing[name] {
		ts.mu.Unlock()
		return fmt.Errorf("%w: clones of template %s are being started on this node (or lazy clones still load their memory from it); retry when they run", template.ErrBusy, name)
	}
	ts.removing[name] = true
	ts.mu.Unlock()
	defer func() {
		ts.mu.Lock()
		delete(ts.removing, name)
		ts.mu.Unlock()
	}()
	t, err := ts.store.Get(ctx, name)
	if err != nil && !errors.Is(err, archive.ErrCorrupt) {
		return err
	}
	if err := ts.store.Remove(ctx, name); err != nil {
		return err
	}
	if t != nil && ts.store.Shared() {
		keep := map[string]bool{}
		if list, err := ts.store.List(ctx); err == nil {
			for _, o := range list {
				keep[o.Digest] = true
			}
		} else {
			keep = nil
		}
		if keep != nil {
			ts.cache.Prune(ts.store, keep)
		}
	}
	return nil
}

// CloneSpec asks for copies of a template.
type CloneSpec struct {
	// Template is the template's name.
	Template string
	// Count is how many clones (≥ 1).
	Count int
	// Prefix names them PREFIX-1, PREFIX-2…; "" uses the template's name.
	Prefix string
	// Ready, if set, is a probe (template.ParseProbe) that each clone
	// must pass before RunFromTemplate returns; ReadyTimeout bounds it.
	Ready        string
	ReadyTimeout time.Duration
	// Lazy restores each clone before its memory (lazy pages).
	Lazy bool
	// Policy applies to every clone.
	Policy store.Policy
	// Publish forwards host ports to the clones' ports ("HOSTPORT:PORT");
	// clone i (from 0) gets HOSTPORT+i.
	Publish []string
}

// namePrefix is the prefix of the clones' names (PREFIX-1, PREFIX-2…):
// the spec's, else the template's name; refused when it makes no valid
// job name.
func (spec CloneSpec) namePrefix(t *template.Template) (string, error) {
	prefix := spec.Prefix
	if prefix == "" {
		prefix = t.Name
	}
	return prefix, validName(prefix + "-1")
}

// Clone reports on one clone.
type Clone struct {
	// Job is the clone's job (nil if it could not be created).
	Job *store.Job
	// Restore is how long its restore took; Ready how long from the
	// request until its probe passed (0 without a probe).
	Restore, Ready time.Duration
	// Published lists the host ports forwarded to the clone
	// ("HOSTPORT:PORT").
	Published []string
	// RSSAtReady is the clone's resident memory when its probe passed
	// (with lazy pages, what had been loaded by then).
	RSSAtReady int64
	// Err is why this clone failed.
	Err error
}

// CloneReport is the result of RunFromTemplate.
type CloneReport struct {
	Clones []Clone
	// CacheHit says the template's images were already unpacked and
	// verified on this node; Prepare is how long the checks and the
	// cache took before the first restore began.
	CacheHit bool
	Prepare  time.Duration
}

// RunFromTemplate starts spec.Count clones of a template at once, each a
// job of its own (name, log, policy, cgroup), in its own PID namespace
// and, when the template listens on TCP ports, its own network namespace
// with an address the host reaches. Everything that could make a clone
// unsafe is checked before the first one starts. The error is non-nil
// when any clone failed (the report still lists every clone).
func (m *Manager) RunFromTemplate(ctx context.Context, spec CloneSpec) (*CloneReport, error) {
	start := time.Now()
	cl, ok := m.engine.(Cloner)
	if !ok {
		return nil, fmt.Errorf("%w: this engine cannot clone", template.ErrInvalid)
	}
	if spec.Count <= 0 {
		spec.Count = 1
	}
	if spec.Count > 250 {
		return nil, fmt.Errorf("%w: at most 250 clones at once", template.ErrInvalid)
	}
	probe, err := template.ParseProbe(spec.Ready)
	if err != nil {
		return nil, err
	}
	var pubs []template.Publish
	for _, s := range spec.Publish {
		p, err := template.ParsePublish(s)
		if err != nil {
			return nil, err
		}
		if p.HostPort+spec.Count-1 > 65535 {
			return nil, fmt.Errorf("%w: --publish %s: not enough host ports above %d for %d clones", template.ErrInvalid, s, p.HostPort, spec.Count)
		}
		pubs = append(pubs, p)
	}
	ts := m.tpl()
	inUse, err := ts.use(spec.Template)
	if err != nil {
		return nil, err
	}
	defer inUse()
	t, err := ts.store.Get(ctx, spec.Template)
	if err != nil {
		return nil, err
	}
	if t.Kind != "" && t.Kind != "process" {
		return m.runContainerClones(ctx, spec, t, start)
	}
	if err := template.CheckExecutables(t); err != nil {
		return nil, err
	}
	if probe != nil && probe.Kind != "file" && probe.Port == 0 && len(t.Listen) == 0 {
		return nil, fmt.Errorf("%w: probe %s names no port and template %s listened on none when it was made (was the service ready?); give the port (tcp:PORT, http:http://HOST:PORT/PATH)", template.ErrInvalid, probe.Raw, t.Name)
	}
	if len(pubs) > 0 && len(t.Listen) == 0 {
		return nil, fmt.Errorf("%w: --publish: template %s listens on no TCP port, so its clones get no address to forward to", template.ErrInvalid, t.Name)
	}
	if len(t.Listen) > 0 {
		// The clones take namespaces from the pool; it fills up again
		// once they have started, not while they restore.
		defer ts.net.Hold()()
	}
	images, mf, hit, imagesDone, err := ts.cache.Images(ctx, ts.store, t)
	if err != nil {
		return nil, err
	}
	defer imagesDone()
	prefix, err := spec.namePrefix(t)
	if err != nil {
		return nil, err
	}
	rep := &CloneReport{Clones: make([]Clone, spec.Count), CacheHit: hit, Prepare: time.Since(start)}
	// Names are reserved one after another (CreateJob refuses a taken
	// name); the restores then run in parallel.
	next := 1
	jobs := make([]*store.Job, spec.Count)
	for i := range jobs {
		for ; ; next++ {
			j, err := m.newClone(ctx, fmt.Sprintf("%s-%d", prefix, next), t, mf, spec.Policy)
			if errors.Is(err, store.ErrExists) {
				continue
			}
			if err != nil {
				for _, j := range jobs[:i] {
					_ = m.store.DeleteJob(context.Background(), j.ID)
					_ = m.cg.remove(j.Cgroup)
				}
				return nil, err
			}
			jobs[i] = j
			next++
			break
		}
	}
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &rep.Clones[i]
			c.Job, c.Err = m.startClone(ctx, cl, j, t, mf, images, spec.Lazy)
			c.Restore = time.Since(start)
			if c.Err == nil {
				c.Published, c.Err = m.publish(c.Job, pubs, i)
			}
			if c.Err != nil || probe == nil {
				return
			}
			port := 0
			if len(t.Listen) > 0 {
				port = t.Listen[0]
			}
			wait := spec.ReadyTimeout
			if wait <= 0 {
				wait = time.Minute
			}
			pctx, cancel := context.WithTimeout(ctx, wait)
			defer cancel()
			if err := probe.Wait(pctx, c.Job.Address, port); err != nil {
				c.Err = fmt.Errorf("clone %s: %w", c.Job.Name, err)
				return
			}
			c.Ready = time.Since(start)
			c.RSSAtReady = treeRSS(c.Job.PID) // with lazy pages: how much had arrived
		}()
	}
	wg.Wait()
	var failed []string
	for _, c := range rep.Clones {
		if c.Err != nil {
			failed = append(failed, c.Err.Error())
		}
	}
	if len(failed) > 0 {
		return rep, fmt.Errorf("%d of %d clones failed: %s", len(failed), spec.Count, strings.Join(failed, "; "))
	}
	return rep, nil
}

// newClone records a clone's job (starting: no operation may begin) and
// creates its cgroup.
func (m *Manager) newClone(ctx context.Context, name string, t *template.Template, mf *archive.Manifest, p store.Policy) (*store.Job, error) {
	id := store.NewID("job-")
	if err := os.MkdirAll(m.cfg.LogDir, 0o700); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	j := &store.Job{ID: id, Name: name, State: string(Starting), LogPath: filepath.Join(m.cfg.LogDir, id+".log"),
		Policy: m.withDefaults(p), Template: t.Name, Dir: "/"}
	if len(mf.Processes) > 0 {
		j.Cmd, j.Dir = mf.Processes[0].Cmdline, mf.Processes[0].Cwd
	}
	if m.cg.available() {
		j.Cgroup = m.cg.name(id)
		f, err := m.cg.create(j.Cgroup)
		if err != nil {
			m.log.Warn("the clone runs without a cgroup of its own", "job", id, "err", err)
			j.Cgroup = ""
		} else {
			f.Close()
		}
	}
	if err := m.store.CreateJob(ctx, j); err != nil {
		_ = m.cg.remove(j.Cgroup)
		return nil, err
	}
	return j, nil
}

// startClone restores one clone for job j and supervises it.
func (m *Manager) startClone(ctx context.Context, cl Cloner, j *store.Job, t *template.Template, mf *archive.Manifest,
	images string, lazy bool) (*store.Job, error) {
	ts := m.tpl()
	fail := func(err error) (*store.Job, error) {
		j2, _ := m.store.Commit(context.Background(), j.ID, store.Change{
			Job:    func(j *store.Job) error { j.State, j.Error = string(Failed), err.Error(); return nil },
			Events: []store.Event{{Type: "clone-failed", Message: err.Error()}},
		})
		if j2 == nil {
			j2 = j
		}
		return j2, err
	}
	logf, err := os.OpenFile(j.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fail(fmt.Errorf("open clone log: %w", err))
	}
	defer logf.Close()
	outputs := map[string]*os.File{}
	for _, o := range t.Outputs {
		outputs[o] = logf
	}
	var att *template.Attachment
	netStart := time.Now()
	if len(t.Listen) > 0 {
		if att, err = ts.net.Attach(j.ID); err != nil {
			return fail(err)
		}
		if j, err = m.store.UpdateJob(ctx, j.ID, func(j *store.Job) error {
			j.Address, j.NetNS = att.Address, att.NS
			return nil
		}); err != nil {
			ts.net.Detach(att)
			return fail(err)
		}
	}
	req := checkpoint.CloneRequest{ImagesDir: images, Manifest: mf, Name: j.Name, Outputs: outputs, Lazy: lazy}
	if att != nil {
		req.NetNS = att.NSPath
	}
	netTime := time.Since(netStart)
	res, err := cl.RestoreClone(ctx, req)
	if err != nil {
		ts.net.Detach(att)
		return fail(err)
	}
	if res.Lazy != nil {
		// Its images stay in use while the lazy-pages server reads them.
		inUse, _ := ts.use(t.Name)
		held := ts.cache.Hold(images)
		go func() { // reap the lazy-pages server; say if it failed
			defer held()
			if inUse != nil {
				defer inUse()
			}
			if err := res.Lazy.Err(); err != nil {
				m.log.Warn("lazy-pages server ended with an error", "job", j.ID, "err", err)
			}
		}()
	}
	how := "cloned"
	if lazy {
		how = "cloned (lazy)"
	}
	m.log.Info("clone started", "job", j.ID, "template", t.Name, "network", netTime, "pooled", att != nil && att.Pooled,
		"criu", res.CRIUTime, "lazy", lazy)
	j2, err := m.restored(j, "template "+t.Name, res.PID, "", how, netTime+res.CRIUTime, true)
	if err != nil {
		return j, err
	}
	return j2, nil
}

// publish starts the host-port forwarders of clone number i.
func (m *Manager) publish(j *store.Job, pubs []template.Publish, i int) ([]string, error) {
	if len(pubs) == 0 {
		return nil, nil
	}
	ts := m.tpl()
	var out []string
	for _, p := range pubs {
		hp := p.HostPort + i
		px, err := template.StartProxy(hp, net.JoinHostPort(j.Address, strconv.Itoa(p.Port)))
		if err != nil {
			m.unpublish(j.ID)
			return out, fmt.Errorf("clone %s: %w", j.Name, err)
		}
		ts.mu.Lock()
		ts.proxies[j.ID] = append(ts.proxies[j.ID], px)
		ts.mu.Unlock()
		out = append(out, fmt.Sprintf("%d:%d", hp, p.Port))
		m.event(j.ID, "published", "host port %d forwarded to %s:%d", hp, j.Address, p.Port)
	}
	return out, nil
}

// unpublish stops a clone's forwarders.
func (m *Manager) unpublish(id string) {
	ts := m.tpl()
	ts.mu.Lock()
	pxs := ts.proxies[id]
	delete(ts.proxies, id)
	ts.mu.Unlock()
	for _, px := range pxs {
		px.Close()
	}
}

// cloneEnded frees what a clone held outside its processes (its
// host-port forwarders, network namespace and veth pair) once it no
// longer runs.
func (m *Manager) cloneEnded(j *store.Job) {
	if j == nil || j.NetNS == "" {
		return
	}
	m.unpublish(j.ID)
	m.tpl().net.Detach(template.AttachmentOf(j.NetNS, j.Address))
}

// treeRSS is the resident memory of the tree rooted at pid, in bytes.
func treeRSS(pid int) int64 {
	tree, _ := proc.Tree(pid)
	var n int64
	for _, p := range tree {
		if st, err := proc.ReadStat(p); err == nil {
			n += st.RSSPages * int64(os.Getpagesize())
		}
	}
	return n
}
