package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/cedana/cedana/internal/cluster"
	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/storage"
	"github.com/cedana/cedana/internal/template"
)

// TemplatesBucket is the JetStream object store that holds a cluster's
// templates when no storage backend is configured (storage.backend
// local): templates must be shared for any node to clone them.
const TemplatesBucket = "cedana_templates"

// clusterNames adapts the cluster's name reservations to template.Names.
type clusterNames struct{ l *cluster.NameLocks }

func (c clusterNames) Reserve(ctx context.Context, name string) (func(), error) {
	release, err := c.l.Reserve(ctx, name)
	if errors.Is(err, cluster.ErrNameHeld) {
		return nil, fmt.Errorf("%w: %w", template.ErrBusy, err)
	}
	return release, err
}

// shareTemplates makes the job manager keep templates where every node
// of the cluster finds them: in the configured storage backend, or, with
// storage.backend local, in the cluster's own JetStream object store
// (encrypted when storage.encryption.key_file is set). Names are reserved
// cluster-wide.
func (c *clusterNode) shareTemplates(ctx context.Context, cfg config.Config) error {
	locks, err := c.node.TemplateNames(ctx)
	if err != nil {
		return err
	}
	names := clusterNames{locks}
	if cfg.Storage.Backend != "" && cfg.Storage.Backend != storage.KindLocal {
		c.m.SetTemplateStorage(nil, names, c.node.Name()) // the configured backend
		return nil
	}
	js, err := storage.OpenJetStreamShared(ctx, c.node.BulkJetStream(), storage.JetStreamConfig{
		URL: c.node.ServerURL(), Bucket: TemplatesBucket, CreateBucket: true, Replicas: c.node.Replicas(),
	})
	if err != nil {
		return fmt.Errorf("the cluster's template store: %w", err)
	}
	var b storage.Backend = js
	if kf := cfg.Storage.Encryption.KeyFile; kf != "" {
		key, err := storage.LoadKey(kf)
		if err != nil {
			return fmt.Errorf("the cluster's template store: %w", err)
		}
		if b, err = storage.NewEncrypted(js, key); err != nil {
			return fmt.Errorf("the cluster's template store: %w", err)
		}
	}
	c.m.SetTemplateStorage(b, names, c.node.Name())
	return nil
}
