package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// A container kept stopped: the source of a migration checkpoints its
// container with DumpRequest.KeepStopped and decides afterwards, once the
// target has the job, whether the stopped copy dies or runs again. The
// target restores with RestoreRequest.LeaveStopped and either resumes its
// copy (SIGCONT, as any stopped tree) or removes it with Remove.

// StoppedContainer is a container whose processes a KeepStopped dump
// left stopped: runc still knows it, its writable layer is still there.
type StoppedContainer struct {
	d memoryStreamer
	t *target
}

// PID is the container's init as seen from the host.
func (c *StoppedContainer) PID() int { return c.t.pid }

// Resume lets the container's processes run again and checks that none
// stays stopped.
func (c *StoppedContainer) Resume() error { return resumeStopped(c.t.pid) }

// Kill removes the stopped container (`runc delete -f`, which kills its
// processes) and the state Cedana keeps for it (its writable layer),
// waiting up to wait.
func (c *StoppedContainer) Kill(wait time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	err := c.d.kill(ctx, c.t)
	c.d.finish(c.t)
	if err != nil {
		return fmt.Errorf("remove the stopped %s container %s: %w", c.d.name(), c.t.info.ID, err)
	}
	return nil
}

// Remove deletes a runc container, whatever its state (`runc delete -f`
// kills its processes), with the state Cedana keeps for a container it
// runs. A container runc does not know is not an error. Docker
// containers are refused.
func (s *Service) Remove(ctx context.Context, runtime, id string) error {
	if runtime != Runc {
		return invalid("removing a %s container is not supported here (only runc)", runtime)
	}
	if err := checkRuncID(id); err != nil {
		return err
	}
	d, err := newRuncDriver(s)
	if err != nil {
		return err
	}
	var rerr error
	if _, err := d.state(ctx, id); err == nil {
		if out, err := d.command(ctx, "delete", "-f", id).CombinedOutput(); err != nil {
			rerr = fmt.Errorf("remove runc container %s: %w", id, runcError(err, out))
		}
	} else if !errors.Is(err, errNoRuncContainer) {
		rerr = err
	}
	if mc, err := s.loadManaged(id); err == nil {
		mc.remove()
	} else if !errors.Is(err, os.ErrNotExist) && rerr == nil {
		rerr = err
	}
	return rerr
}
