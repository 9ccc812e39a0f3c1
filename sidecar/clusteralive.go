package sidecar

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Liveness asked of the peer (docs/CLUSTER.md, "Owner cut off from
// Redis"). Redis tells a node's liveness (its key, its leases' renewals),
// but a node whose own link to Redis broke stops renewing while it still
// serves its users, their PHP calling it on its own web server. Before a
// node takes over a session whose lease expired, or resumes the sessions
// of a node whose liveness key expired, it asks that node over the peer
// listener: a node that answers that it still holds the session (or is
// the same incarnation, for the orphans) keeps it, and the call is
// forwarded to it. A node killed refuses at once; a node frozen (SIGSTOP)
// does not answer within peerAskTimeout, and is then taken for gone for a
// while without asking again, so a frozen node's sessions are taken over
// one ask late, not one per session.

// peerAlivePath is the peer listener's liveness question: ?member=
// node|incarnation, and optionally &sk= and &lease= the lease as Redis
// last held it. 204: this is that incarnation, not shutting down, and
// (with sk) it holds exactly that lease; 409 not_owner otherwise.
const peerAlivePath = "/peer/alive"

// peerAskTimeout bounds the question: a frozen node accepts connections
// (its kernel does) and answers nothing.
func (cl *cluster) peerAskTimeout() time.Duration {
	return min(max(cl.ls.ttl/4, 100*time.Millisecond), time.Second)
}

// silentPeers remembers the peers that did not answer (or refused), for a
// third of the lease TTL: they are not asked again meanwhile.
type silentPeers struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func (s *silentPeers) silent(addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Before(s.until[addr])
}

func (s *silentPeers) mark(addr string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.until == nil {
		s.until = map[string]time.Time{}
	}
	now := time.Now()
	for a, t := range s.until {
		if now.After(t) {
			delete(s.until, a)
		}
	}
	s.until[addr] = now.Add(d)
}

// peerAlive asks the node of l whether it is alive and, with sk, still
// holds l for that session. Anything but a yes (refused, no answer in
// time, another incarnation, a 409) is a no.
func (cl *cluster) peerAlive(ctx context.Context, l lease, sk string) bool {
	if l.peer == "" || l.peer == cl.ls.self.peer || cl.silent.silent(l.peer) {
		return false
	}
	q := url.Values{"member": {l.member()}}
	if sk != "" {
		q.Set("sk", sk)
		q.Set("lease", l.String())
	}
	ctx, cancel := context.WithTimeout(ctx, cl.peerAskTimeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+l.peer+peerAlivePath+"?"+q.Encode(), nil)
	if err != nil {
		return false
	}
	req.Header.Set("Authorization", "Bearer "+cl.secret)
	resp, err := cl.peer.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, context.DeadlineExceeded) {
			cl.silent.mark(l.peer, cl.ls.ttl/3)
		}
		cl.metrics.clusterPeerAsks.WithLabelValues("silent").Inc()
		return false
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		cl.metrics.clusterPeerAsks.WithLabelValues("gone").Inc()
		return false
	}
	cl.metrics.clusterPeerAsks.WithLabelValues("alive").Inc()
	return true
}

// serveAlive answers peerAlive, behind the peer listener's secret.
func (cl *cluster) serveAlive(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ok := q.Get("member") == cl.ls.self.member() && !cl.reg.isClosing()
	if sk := q.Get("sk"); ok && sk != "" {
		l, held := cl.holds(sk)
		ok = held && l.String() == q.Get("lease")
	}
	if !ok {
		writeError(w, ErrNotOwner)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// askDead keeps the peer address of every live node the heartbeat saw
// (all, their liveness keys' values) and returns those of dead that do
// not answer peerAlive: a node whose liveness key expired because its own
// link to Redis broke still serves its sessions, and is not swept.
func (o *orphans) askDead(ctx context.Context, all []string, keys []*redis.StringCmd, dead []string) []string {
	if o.peers == nil {
		o.peers = map[string]string{}
	}
	seen := make(map[string]bool, len(all))
	for i, m := range all {
		seen[m] = true
		if addr := keys[i].Val(); addr != "" {
			o.peers[m] = addr
		}
	}
	for m := range o.peers {
		if !seen[m] {
			delete(o.peers, m)
		}
	}
	gone := dead[:0:0]
	for _, m := range dead {
		node, inc, _ := strings.Cut(m, "|")
		if addr := o.peers[m]; addr != "" && o.cl.peerAlive(ctx, lease{node: node, incarnation: inc, peer: addr}, "") {
			continue
		}
		gone = append(gone, m)
	}
	return gone
}
