package container

import "context"

// Running describes a running container.
type Running struct {
	// ID is the container's full ID; Name its name (the ID for runc).
	ID, Name string
	// PID is the container's init process as seen from the host.
	PID int
}

// Lookup finds a running container by ID or (Docker) name. It fails with
// a clear error for an unknown, stopped or unsupported container.
func (s *Service) Lookup(ctx context.Context, runtime, id string) (*Running, error) {
	d, err := s.driver(runtime)
	if err != nil {
		return nil, err
	}
	t, err := d.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	name := t.info.Name
	if name == "" {
		name = t.info.ID
	}
	return &Running{ID: t.info.ID, Name: name, PID: t.pid}, nil
}
