package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TemplateNamesBucket holds the reservations of template names: a node
// making or removing template NAME holds the key NAME for that time, so
// that two nodes never make one name at once (docs/cluster.md).
const TemplateNamesBucket = "cedana_template_names"

// nameHold is how long a reservation lasts at most: one left by a node
// that died while making a template frees itself after it.
const nameHold = time.Hour

// ErrNameHeld means another holder reserved the name.
var ErrNameHeld = errors.New("name reserved")

// NameLocks reserves names cluster-wide with KV compare-and-set.
type NameLocks struct {
	node string
	kv   jetstream.KeyValue
}

// nameHolder is the value of a reservation.
type nameHolder struct {
	Node  string    `json:"node"`
	Since time.Time `json:"since"`
}

// TemplateNames returns the node's handle on the template name
// reservations, creating the bucket if needed.
func (n *Node) TemplateNames(ctx context.Context) (*NameLocks, error) {
	kv, err := n.bucket(ctx, jetstream.KeyValueConfig{
		Bucket:      TemplateNamesBucket,
		Description: "cedana template names being made or removed (docs/cluster.md)",
		History:     1,
		TTL:         nameHold,
	})
	if err != nil {
		return nil, err
	}
	return &NameLocks{node: n.opts.Node, kv: kv}, nil
}

// Reserve holds name until release is called (or for an hour at most).
// It fails with ErrNameHeld, naming the holder, when the name is held.
func (l *NameLocks) Reserve(ctx context.Context, name string) (func(), error) {
	b, _ := json.Marshal(nameHolder{Node: l.node, Since: time.Now().UTC()})
	rev, err := l.kv.Create(ctx, name, b)
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		var h nameHolder
		if e, gerr := l.kv.Get(ctx, name); gerr == nil {
			_ = json.Unmarshal(e.Value(), &h)
		}
		return nil, fmt.Errorf("%w: %s is being made or removed by node %s since %s", ErrNameHeld, name, h.Node, h.Since.Format(time.RFC3339))
	}
	if err != nil {
		return nil, fmt.Errorf("reserve the name %s in the cluster: %w", name, err)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Only while it is still ours.
		_ = l.kv.Delete(ctx, name, jetstream.LastRevision(rev))
	}, nil
}
