// Package cluster joins a cedana daemon to other daemons over NATS with
// JetStream: it starts an embedded NATS server when no cluster URL is
// configured (one machine, zero setup) or connects to a real NATS cluster,
// and keeps this node's membership (heartbeat and capacity) in a JetStream
// key-value bucket so that every node sees which nodes are ready or down.
//
// The names other programs rely on are defined here, in one place:
//
//	KV bucket cedana_nodes   key: node name, value: NodeInfo (JSON),
//	                         one entry per heartbeat; MaxAge 3 × node timeout
//	KV bucket cedana_template_names  key: template name, value: the node
//	                         making or removing it (names.go); MaxAge 1 h
//
// Ownership of jobs across nodes (leases, epochs, fencing) follows
// docs/cluster.md; membership alone never decides who runs a job.
package cluster
