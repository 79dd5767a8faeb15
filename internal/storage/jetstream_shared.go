package storage

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
)

// OpenJetStreamShared opens (or, with cfg.CreateBucket, creates) the object
// store over a JetStream context the caller already has — a cedana
// cluster node's — instead of dialling cfg.URL. Close then leaves the
// caller's connection open. cfg.URL only names the store in messages.
func OpenJetStreamShared(ctx context.Context, js jetstream.JetStream, cfg JetStreamConfig) (*JetStream, error) {
	j := &JetStream{cfg: cfg}
	j.name = "jetstream://" + cfg.Bucket + " at " + redactServers(cfg.URL)
	if cfg.Bucket == "" {
		return nil, j.err("connect", "", errors.New("no object store configured"), "set storage.jetstream.bucket")
	}
	if j.cfg.PartSize <= 0 {
		j.cfg.PartSize = defaultPartSize
	}
	if j.cfg.Replicas <= 0 {
		j.cfg.Replicas = 1
	}
	obs, err := js.ObjectStore(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) && cfg.CreateBucket {
		obs, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket: cfg.Bucket, Replicas: j.cfg.Replicas, Storage: jetstream.FileStorage,
			Description: "Cedana checkpoints",
		})
	}
	if err != nil {
		return nil, j.classify("connect", "", err)
	}
	j.js, j.obs = js, obs
	return j, nil
}
