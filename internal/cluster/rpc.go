package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Subject names the request/reply subject of a verb on a node:
// cedana.node.<node>.<verb>. The verbs are the daemon's (dump, restore,
// migrate-in, kill…); each calls the same local service as the gRPC API.
func Subject(node, verb string) string { return "cedana.node." + node + "." + verb }

// Codes a remote error carries, so that callers can branch on them as on
// local errors.
const (
	CodeInternal        = "internal"
	CodeNotFound        = "not_found"
	CodeInvalid         = "invalid"
	CodeFailedCondition = "failed_precondition"
	CodeStaleEpoch      = "stale_epoch"
)

// RemoteError is an error a node's handler returned.
type RemoteError struct {
	Node, Verb string
	Code       string
	Message    string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("node %s refused %s: %s", e.Node, e.Verb, e.Message)
}

// Is lets errors.Is(err, ErrStaleEpoch) see through a remote error.
func (e *RemoteError) Is(target error) bool {
	return e.Code == CodeStaleEpoch && target == ErrStaleEpoch
}

// ErrNodeUnreachable means no daemon answered on the node's subject.
var ErrNodeUnreachable = errors.New("node unreachable")

// Handler serves one verb: it decodes req and returns a reply to encode.
// An error it returns reaches the caller with Code (CodeOf decides).
type Handler func(ctx context.Context, req json.RawMessage) (any, error)

type envelope struct {
	Reply json.RawMessage `json:"reply,omitempty"`
	Code  string          `json:"code,omitempty"`
	Error string          `json:"error,omitempty"`
}

// Serve answers verb on this node's subject until the returned
// subscription is drained or the node closes. Requests are handled one
// at a time per verb, in order; timeout bounds each.
func (n *Node) Serve(verb string, timeout time.Duration, codeOf func(error) string, h Handler) (*nats.Subscription, error) {
	sub, err := n.nc.Subscribe(Subject(n.opts.Node, verb), func(m *nats.Msg) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var env envelope
		reply, err := h(ctx, m.Data)
		if err == nil {
			env.Reply, err = json.Marshal(reply)
		}
		if err != nil {
			env.Code, env.Error = CodeInternal, err.Error()
			if errors.Is(err, ErrStaleEpoch) {
				env.Code = CodeStaleEpoch
			} else if codeOf != nil {
				env.Code = codeOf(err)
			}
		}
		b, merr := json.Marshal(env)
		if merr != nil {
			b = []byte(`{"code":"internal","error":"unencodable reply"}`)
		}
		_ = m.Respond(b)
	})
	if err != nil {
		return nil, fmt.Errorf("serve %s: %w", Subject(n.opts.Node, verb), err)
	}
	// Once Serve returns, callers anywhere in the cluster reach the verb.
	if err := n.nc.Flush(); err != nil {
		sub.Unsubscribe()
		return nil, fmt.Errorf("serve %s: %w", Subject(n.opts.Node, verb), err)
	}
	return sub, nil
}

// Call sends req to verb on node and decodes the reply into out (which may
// be nil). A handler's error comes back as a *RemoteError.
func (n *Node) Call(ctx context.Context, node, verb string, req, out any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	m, err := n.nc.RequestWithContext(ctx, Subject(node, verb), b)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("%w: no cedana daemon answers as node %s (is it running and joined to this cluster?)", ErrNodeUnreachable, node)
	}
	if err != nil {
		return fmt.Errorf("%s on node %s: %w", verb, node, err)
	}
	var env envelope
	if err := json.Unmarshal(m.Data, &env); err != nil {
		return fmt.Errorf("%s on node %s: unreadable reply: %w", verb, node, err)
	}
	if env.Code != "" {
		return &RemoteError{Node: node, Verb: verb, Code: env.Code, Message: env.Error}
	}
	if out != nil && len(env.Reply) > 0 {
		if err := json.Unmarshal(env.Reply, out); err != nil {
			return fmt.Errorf("%s on node %s: unreadable reply: %w", verb, node, err)
		}
	}
	return nil
}
