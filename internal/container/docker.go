package container

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/fault"
)

// dockerDriver checkpoints Docker containers through the engine's API:
// the engine's own checkpoint (runc and CRIU under containerd) writes the
// images; Cedana adds the container's configuration and the changes of
// its overlay2 writable layer, and on restore recreates the container
// from the same image, fills its writable layer and starts it from the
// checkpoint.
//
// Docker 20.10 cannot start a container from a checkpoint directory of
// the caller's choosing, only from one below the container's own
// directory in the engine's data root; Cedana therefore stages under the
// data root (DockerRootDir/tmp) and moves the images into place, which
// needs the engine on the same machine.
type dockerDriver struct {
	s    *Service
	c    *dockerClient
	info *dockerInfo
}

var _ driver = (*dockerDriver)(nil)

// restoreCheckpointName is the checkpoint name used to start a container
// from Cedana's images.
const restoreCheckpointName = "cedana-restore"

func newDockerDriver(s *Service) (*dockerDriver, error) {
	c, err := newDockerClient(s.set.DockerHost)
	if err != nil {
		return nil, err
	}
	return &dockerDriver{s: s, c: c}, nil
}

func (d *dockerDriver) name() string { return Docker }

func (d *dockerDriver) optionHint(opt string) string {
	return fmt.Sprintf("add the line `%s` to %s (runc reads it for every checkpoint and restore; Docker's API has no such option)", opt, dockerCRIUConfig)
}

// engine checks, once, that the engine can checkpoint and is local.
func (d *dockerDriver) engine(ctx context.Context) (*dockerInfo, error) {
	if d.info != nil {
		return d.info, nil
	}
	in, err := d.c.info(ctx)
	if err != nil {
		return nil, err
	}
	if !in.ExperimentalBuild {
		return nil, fmt.Errorf("%w: the Docker engine at %s (version %s) runs without experimental features, which checkpoints need; add {\"experimental\": true} to /etc/docker/daemon.json and restart dockerd",
			ErrUnavailable, d.c.host, in.ServerVersion)
	}
	if st, err := os.Stat(filepath.Join(in.DockerRootDir, "containers")); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%w: the Docker engine's data root %s is not on this machine; cedana must run on the engine's host (it reads writable layers and places checkpoints there)",
			ErrUnavailable, in.DockerRootDir)
	}
	d.info = in
	return in, nil
}

func (d *dockerDriver) stagingParent(ctx context.Context) (string, error) {
	in, err := d.engine(ctx)
	if err != nil {
		return "", err
	}
	return filepath.Join(in.DockerRootDir, "tmp"), nil
}

func (d *dockerDriver) lookup(ctx context.Context, id string) (*target, error) {
	if _, err := d.engine(ctx); err != nil {
		return nil, err
	}
	dc, raw, err := d.c.inspect(ctx, id)
	if isStatus(err, http.StatusNotFound) {
		return nil, invalid("no Docker container %q (see `docker ps -a`)", id)
	}
	if err != nil {
		return nil, err
	}
	name := strings.TrimPrefix(dc.Name, "/")
	switch {
	case dc.State.Paused:
		return nil, invalid("Docker container %s is paused; unpause it (`docker unpause %s`) before checkpointing it", name, name)
	case dc.State.Restarting:
		return nil, invalid("Docker container %s is restarting; wait until it runs", name)
	case !dc.State.Running || dc.State.Pid <= 0:
		return nil, invalid("Docker container %s is not running (status %s); only a running container can be checkpointed: start it first", name, dc.State.Status)
	}
	if dc.GraphDriver.Name != "overlay2" || dc.GraphDriver.Data["UpperDir"] == "" {
		return nil, invalid("Docker container %s uses the %q storage driver; cedana carries writable layers of overlay2 only", name, dc.GraphDriver.Name)
	}
	upper := dc.GraphDriver.Data["UpperDir"]
	return &target{
		pid:    dc.State.Pid,
		config: raw,
		info: archive.ContainerInfo{Runtime: Docker, ID: dc.ID, Name: name,
			Image: dc.Config.Image, ImageID: dc.Image},
		writeLayer: func(w io.Writer) (LayerStats, error) { return writeUpperDiff(w, upper) },
	}, nil
}

func (d *dockerDriver) checkpoint(ctx context.Context, t *target, imagesDir string, _ criuOptions) error {
	body := map[string]any{"CheckpointID": filepath.Base(imagesDir), "CheckpointDir": filepath.Dir(imagesDir), "Exit": true}
	err := d.c.do(ctx, http.MethodPost, "/containers/"+t.info.ID+"/checkpoints", nil, body, nil)
	if err != nil {
		return d.explain("checkpoint", err)
	}
	return nil
}

// explain turns an engine error from a checkpoint or restore into a
// *criu.Error when it came from CRIU (the message names CRIU's log).
func (d *dockerDriver) explain(op string, err error) error {
	if errors.Is(err, ErrUnavailable) {
		return err
	}
	return explain(op, Docker, err, logPathIn(err.Error()), d.optionHint)
}

func (d *dockerDriver) resume(ctx context.Context, t *target, imagesDir string, _ criuOptions) error {
	if err := d.waitStopped(ctx, t.info.ID); err != nil {
		return err
	}
	return d.startFrom(ctx, t.info.ID, imagesDir)
}

// waitStopped waits until the engine has seen the end of a checkpointed
// container: its checkpoint call returns before the engine marks the
// container as exited, and it cannot be started again until then.
func (d *dockerDriver) waitStopped(ctx context.Context, id string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		dc, _, err := d.c.inspect(ctx, id)
		if err != nil {
			return err
		}
		if !dc.State.Running && !dc.State.Paused {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("Docker container %s still %s 15s after its checkpoint", id, dc.State.Status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// startFrom moves imagesDir into the container's checkpoints and starts
// the container from them.
func (d *dockerDriver) startFrom(ctx context.Context, id, imagesDir string) error {
	in, err := d.engine(ctx)
	if err != nil {
		return err
	}
	ckDir := filepath.Join(in.DockerRootDir, "containers", id, "checkpoints")
	if err := os.MkdirAll(ckDir, 0o700); err != nil {
		return err
	}
	dst := filepath.Join(ckDir, restoreCheckpointName)
	_ = os.RemoveAll(dst)
	if err := moveDir(imagesDir, dst); err != nil {
		return fmt.Errorf("place the checkpoint for the engine: %w", err)
	}
	started := false
	defer func() {
		if started {
			os.RemoveAll(dst) // the engine has read it once started
		} else if _, err := os.Stat(imagesDir); err == nil || moveDir(dst, imagesDir) == nil {
			// The images stay the caller's (copied, or moved back), to
			// keep them when the container cannot be started.
			os.RemoveAll(dst)
		}
	}()
	if err := d.s.fault.At(fault.ContainerResume); err != nil {
		return err // as if the engine had refused to start it
	}
	q := url.Values{"checkpoint": {restoreCheckpointName}}
	for attempt := 1; ; attempt++ {
		err := d.c.do(ctx, http.MethodPost, "/containers/"+id+"/start", q, nil, nil)
		if err == nil {
			started = true
			return nil
		}
		if attempt == checkpointUploadAttempts || !isCheckpointUploadRace(err) {
			return d.explain("restore", err)
		}
		// Nothing was started: the engine failed while handing the
		// checkpoint to containerd. Try again.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(100*time.Millisecond<<(attempt-1), 2*time.Second)):
		}
	}
}

// checkpointUploadAttempts bounds the retries of isCheckpointUploadRace:
// 7 attempts over about 5 s (0.1, 0.2, 0.4, 0.8, 1.6 and 2 s apart). With
// Docker 28 the race once outlasted 4 attempts over 0.6 s (a clean-clone
// run of TestDaemonManageDocker, under the whole suite's load).
const checkpointUploadAttempts = 7

// isCheckpointUploadRace recognizes the engine failing to store a
// checkpoint in containerd's content store because that content "already
// exists" (moby/moby#42900: occasional, before the container starts, and
// gone on the next attempt; seen here with Docker 20.10 on `docker start
// --checkpoint` and `docker checkpoint create` alike).
func isCheckpointUploadRace(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "failed to upload checkpoint to containerd") && strings.Contains(msg, "already exists")
}

func (d *dockerDriver) finish(*target) {} // the stopped container stays, as after `docker checkpoint create`

// dockerConfigDoc is the part of the archived inspect document a restore
// needs to recreate the container.
type dockerConfigDoc struct {
	ID              string `json:"Id"`
	Name            string
	Image           string
	Config          map[string]any
	HostConfig      map[string]any
	NetworkSettings struct {
		Networks map[string]dockerEndpoint
	}
}

func (d *dockerDriver) restore(ctx context.Context, m *archive.Manifest, dir string, req RestoreRequest, _ criu.ImageSource) (*RestoreResult, error) {
	prepStart := time.Now()
	data, err := os.ReadFile(filepath.Join(dir, "container", configEntry))
	if err != nil {
		return nil, fmt.Errorf("the archive has no container configuration: %w", err)
	}
	var doc dockerConfigDoc
	if err := json.Unmarshal(data, &doc); err != nil || doc.Config == nil {
		return nil, fmt.Errorf("%w: the archived container configuration is not a Docker inspect document", archive.ErrCorrupt)
	}
	name := req.Name
	if name == "" {
		name = strings.TrimPrefix(doc.Name, "/")
	}
	res := &RestoreResult{Name: name}

	existing, _, err := d.c.inspect(ctx, name)
	switch {
	case err == nil && existing.ID == m.Container.ID && !existing.State.Running:
		// The checkpointed container itself is still there, stopped:
		// restore into it, with its writable layer reset to the archive's.
		res.ID = existing.ID
		res.Notes = append(res.Notes, fmt.Sprintf("container %s still exists (stopped): restored into it", name))
		if err := resetDir(existing.GraphDriver.Data["UpperDir"]); err != nil {
			return nil, err
		}
	case err == nil && existing.ID == m.Container.ID:
		return nil, invalid("Docker container %s is running; stop it first, or restore a copy under another name with --name", name)
	case err == nil:
		return nil, invalid("a Docker container named %s already exists (%s); remove it or restore under another name with --name", name, shortID(existing.ID))
	case !isStatus(err, http.StatusNotFound):
		return nil, err
	default:
		id, notes, err := d.create(ctx, name, &doc, m)
		if err != nil {
			return nil, err
		}
		res.ID, res.Created, res.Notes = id, true, append(res.Notes, notes...)
	}
	ok := false
	defer func() {
		if !ok && res.Created {
			_ = d.c.do(context.WithoutCancel(ctx), http.MethodDelete, "/containers/"+res.ID, url.Values{"force": {"1"}, "v": {"1"}}, nil, nil)
		}
	}()
	created, _, err := d.c.inspect(ctx, res.ID)
	if err != nil {
		return nil, err
	}
	upper := created.GraphDriver.Data["UpperDir"]
	if created.GraphDriver.Name != "overlay2" || upper == "" {
		return nil, invalid("this engine stores containers with %q; cedana restores writable layers into overlay2 only", created.GraphDriver.Name)
	}
	lf, err := os.Open(filepath.Join(dir, "container", layerEntry))
	if err != nil {
		return nil, fmt.Errorf("the archive has no writable layer: %w", err)
	}
	_, err = applyToUpper(lf, upper, fileSize(lf))
	lf.Close()
	if err != nil {
		return nil, fmt.Errorf("put back the container's writable layer: %w", err)
	}
	res.PrepareTime = time.Since(prepStart)
	rs := time.Now()
	if err := d.startFrom(ctx, res.ID, filepath.Join(dir, "images")); err != nil {
		return nil, fmt.Errorf("restore of Docker container %s failed: %w", name, err)
	}
	res.RestoreTime = time.Since(rs)
	ok = true
	after, _, err := d.c.inspect(ctx, res.ID)
	if err != nil {
		return nil, err
	}
	res.PID = after.State.Pid
	for net, ep := range doc.NetworkSettings.Networks {
		if now, ok := after.NetworkSettings.Networks[net]; ok && ep.IPAddress != "" && now.IPAddress != ep.IPAddress {
			res.Notes = append(res.Notes, fmt.Sprintf("network %s: the container's address is now %s (it was %s); connections to the old address are lost", net, now.IPAddress, ep.IPAddress))
		}
	}
	return res, nil
}

// create recreates the archived container under name from the same image.
func (d *dockerDriver) create(ctx context.Context, name string, doc *dockerConfigDoc, m *archive.Manifest) (string, []string, error) {
	var notes []string
	image, err := d.findImage(ctx, m.Container)
	if err != nil {
		return "", nil, err
	}
	body := map[string]any{}
	for k, v := range doc.Config {
		body[k] = v
	}
	body["Image"] = image
	body["HostConfig"] = doc.HostConfig
	// A user-defined network can give the container its old address back.
	mode, _ := doc.HostConfig["NetworkMode"].(string)
	var ep *dockerEndpoint
	if e, ok := doc.NetworkSettings.Networks[mode]; ok && mode != "bridge" && mode != "default" && mode != "host" && mode != "none" && e.IPAddress != "" {
		ep = &e
		body["NetworkingConfig"] = map[string]any{"EndpointsConfig": map[string]any{
			mode: map[string]any{"IPAMConfig": map[string]any{"IPv4Address": e.IPAddress}, "Aliases": e.Aliases},
		}}
	}
	q := url.Values{"name": {name}}
	var out struct {
		ID       string `json:"Id"`
		Warnings []string
	}
	err = d.c.do(ctx, http.MethodPost, "/containers/create", q, body, &out)
	if err != nil && ep != nil && !isStatus(err, http.StatusConflict) {
		notes = append(notes, fmt.Sprintf("network %s: could not keep the address %s (%v)", mode, ep.IPAddress, err))
		delete(body, "NetworkingConfig")
		err = d.c.do(ctx, http.MethodPost, "/containers/create", q, body, &out)
	}
	if isStatus(err, http.StatusConflict) {
		return "", nil, invalid("cannot create Docker container %s: %v; restore under another name with --name", name, err)
	}
	if err != nil {
		return "", nil, fmt.Errorf("create Docker container %s: %w", name, err)
	}
	return out.ID, notes, nil
}

// findImage returns the image to recreate the container from: the very
// image (by ID) when this engine has it, else the reference it was
// created from, if that resolves.
func (d *dockerDriver) findImage(ctx context.Context, ci *archive.ContainerInfo) (string, error) {
	for _, ref := range []string{ci.ImageID, ci.Image} {
		if ref == "" {
			continue
		}
		var img struct {
			ID string `json:"Id"`
		}
		err := d.c.do(ctx, http.MethodGet, "/images/"+ref+"/json", nil, nil, &img)
		if err == nil {
			if ref == ci.Image && ci.ImageID != "" && img.ID != ci.ImageID {
				return "", invalid("image %s is %s on this machine, but the container was created from %s; load that image (`docker load`) and retry",
					ci.Image, shortID(strings.TrimPrefix(img.ID, "sha256:")), shortID(strings.TrimPrefix(ci.ImageID, "sha256:")))
			}
			if ref == ci.ImageID && ci.Image != "" {
				// Prefer the reference when it still names the same image:
				// `docker ps` shows it.
				var byRef struct {
					ID string `json:"Id"`
				}
				if d.c.do(ctx, http.MethodGet, "/images/"+ci.Image+"/json", nil, nil, &byRef) == nil && byRef.ID == img.ID {
					return ci.Image, nil
				}
			}
			return ref, nil
		}
		if !isStatus(err, http.StatusNotFound) {
			return "", err
		}
	}
	return "", invalid("the container's image %s (%s) is not on this machine; load it (`docker load` or `docker import`) and retry",
		ci.Image, shortID(strings.TrimPrefix(ci.ImageID, "sha256:")))
}

// dockerHasCRIUOption reports whether runc's CRIU configuration file
// gives CRIU the option opt.
func dockerHasCRIUOption(opt string) bool {
	f, err := os.Open(dockerCRIUConfig)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimPrefix(strings.TrimSpace(sc.Text()), "--")
		if l == opt || strings.HasPrefix(l, opt+" ") {
			return true
		}
	}
	return false
}

// moveDir renames src to dst, or copies its (flat) files when they are on
// different filesystems.
func moveDir(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			return fmt.Errorf("%s: %s is not a regular file", src, e.Name())
		}
		if err := copyRegular(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func copyRegular(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// resetDir empties a directory (a stopped container's writable layer).
func resetDir(dir string) error {
	if dir == "" {
		return errors.New("the container has no writable layer directory")
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}
