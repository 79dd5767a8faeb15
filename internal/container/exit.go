package container

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// ExitStatus says how a container's init ended, when the runtime keeps
// it: Docker records the exit code of a stopped container (128+N for a
// signal N, as `docker ps` shows it); runc does not, so known is false.
// Docker updates its state shortly after the init dies: this waits up to
// wait for the container to be reported stopped.
func (s *Service) ExitStatus(ctx context.Context, runtime, id string, wait time.Duration) (code int, known bool, err error) {
	if runtime != Docker {
		return 0, false, nil
	}
	c, err := newDockerClient(s.set.DockerHost)
	if err != nil {
		return 0, false, err
	}
	var doc struct {
		State struct {
			Running  bool
			ExitCode int
		}
	}
	for deadline := time.Now().Add(wait); ; {
		if err := c.do(ctx, http.MethodGet, "/containers/"+url.PathEscape(id)+"/json", nil, nil, &doc); err != nil {
			return 0, false, fmt.Errorf("exit status of container %s: %w", id, err)
		}
		if !doc.State.Running {
			return doc.State.ExitCode, true, nil
		}
		if time.Now().After(deadline) {
			return 0, false, nil
		}
		select {
		case <-ctx.Done():
			return 0, false, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
