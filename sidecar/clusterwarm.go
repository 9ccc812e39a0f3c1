package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// Make-before-break hand-over (docs/CLUSTER.md, "Hand-over at SIGTERM").
// A session handed over is resumed on its next node with a whole login
// (TCP, TLS, SASL, then <resume/>): hundreds at once cost seconds of CPU
// on that node, on each user's critical path. So a node being stopped,
// while it still serves its users, first asks each session's successor
// (the node the orphan rendezvous hash names among the live others) to
// prepare it: the successor reads the PHP session itself (the call names
// it by X-Session-Id, as any forwarded call: passwords never travel) and
// logs in ahead (xmppconn.Prepare), keeping the authenticated stream,
// bound to no resource, for a few seconds. Then, per session, the
// stopping node detaches the stream and tells the successor to take it:
// the successor claims the lease from the stopping node's (the claim
// script's expected lease: no other node can claim it in between) and
// resumes the session on the prepared stream, one round trip; only then
// are the session's waiting forwarded calls told not_owner. Anything
// refused, failed or slow falls back to the plain hand-over: the lease
// is given back and the user's next call, or the orphan adoption,
// resumes them. Correctness never depends on a warm stream: the lease and
// its fencing decide who owns the session, and a warm stream nobody
// claims for is closed.

// Peer routes of the make-before-break hand-over, behind the cluster
// secret; each names the session by X-Session-Id.
const (
	// peerWarmPath (POST) asks this node to prepare the session's
	// resumption: 204 once a warm stream waits for it.
	peerWarmPath = "/peer/warm"
	// peerTakePath (POST, ?lease= the caller's lease of the session)
	// asks this node to take the session over now: 204 once it is
	// online here.
	peerTakePath = "/peer/take"
)

const (
	// warmLife bounds a warm stream's wait for its session: the stopping
	// node asks for the take as soon as the preparation answers and one
	// of its handoffInFlight places is free.
	warmLife = 8 * time.Second
	// warmMax bounds the warm streams a node keeps (each a connection to
	// the Jabber server), whoever asks.
	warmMax = 512
	// warmPreparing bounds the preparations a node runs at once; more
	// wait their turn (bounded by the asking node's call).
	warmPreparing = 32
	// handoffAsks bounds the preparations and takes a stopping node asks
	// of the others at once.
	handoffAsks = 32
	// handoffTakeWait bounds the wait for a successor's take of one
	// session; past it the session's calls route again anyway.
	handoffTakeWait = 2 * time.Second
)

// errWarmFull refuses a preparation past warmMax.
var errWarmFull = fmt.Errorf("%w: too many sessions being prepared here", ErrPeerUnavailable)

// warmPool is a node's warm streams, by session key. A key present with a
// nil Warm is being prepared.
type warmPool struct {
	mu     sync.Mutex
	m      map[string]warmStream
	sem    chan struct{}
	closed bool
}

// warmStream is a stream prepared for a session and the PHP session it
// was prepared with, read from the store then: the take's identity.
type warmStream struct {
	w  *xmppconn.Warm
	ps *phpsession.Session
}

func newWarmPool() *warmPool {
	return &warmPool{m: map[string]warmStream{}, sem: make(chan struct{}, warmPreparing)}
}

// reserve makes room for sk's preparation; false when sk is prepared or
// being prepared already; an error when the pool is full or closed.
func (p *warmPool) reserve(sk string) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch _, ok := p.m[sk]; {
	case p.closed:
		return false, ErrShuttingDown
	case ok:
		return false, nil
	case len(p.m) >= warmMax:
		return false, errWarmFull
	}
	p.m[sk] = warmStream{}
	return true, nil
}

// put keeps w, prepared with PHP session ps, for sk (reserved), until
// warmLife; false when the pool was closed or sk's reservation dropped
// meanwhile (w is then the caller's).
func (p *warmPool) put(sk string, w *xmppconn.Warm, ps *phpsession.Session, expired func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur, ok := p.m[sk]; p.closed || !ok || cur.w != nil {
		return false
	}
	p.m[sk] = warmStream{w, ps}
	time.AfterFunc(warmLife, func() {
		if p.remove(sk, w) {
			w.Close()
			expired()
		}
	})
	return true
}

// remove drops sk's entry if it is w (nil: a reservation), and reports
// whether it was.
func (p *warmPool) remove(sk string, w *xmppconn.Warm) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur, ok := p.m[sk]; ok && cur.w == w {
		delete(p.m, sk)
		return true
	}
	return false
}

// take returns sk's warm stream and forgets it; nil when there is none
// (or it is still being prepared).
func (p *warmPool) take(sk string) *xmppconn.Warm {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := p.m[sk].w
	if w != nil {
		delete(p.m, sk)
	}
	return w
}

// session returns the PHP session sk's warm stream was prepared with,
// keeping the stream; nil when there is none.
func (p *warmPool) session(sk string) *phpsession.Session {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ws := p.m[sk]; ws.w != nil {
		return ws.ps
	}
	return nil
}

// close closes every warm stream; the pool takes no more.
func (p *warmPool) close() {
	p.mu.Lock()
	p.closed = true
	m := p.m
	p.m = map[string]warmStream{}
	p.mu.Unlock()
	for _, ws := range m {
		if ws.w != nil {
			ws.w.Close()
		}
	}
}

// warm is ownership.warm.
func (cl *cluster) warm(sk string) *xmppconn.Warm { return cl.warms.take(sk) }

// dropWarm closes sk's warm stream, if any: another node took the
// session, or the take failed.
func (cl *cluster) dropWarm(sk string) {
	if w := cl.warms.take(sk); w != nil {
		w.Close()
		cl.metrics.clusterWarm.WithLabelValues("dropped").Inc()
	}
}

// peerSession reads the PHP session a peer route names (X-Session-Id)
// and its key; when it names none, the call is answered session_missing
// and ok is false.
func peerSession(w http.ResponseWriter, r *http.Request) (id, sk string, ok bool) {
	id = r.Header.Get("X-Session-Id")
	if id == "" {
		writeError(w, ErrSessionMissing)
		return "", "", false
	}
	return id, sessionKey(id), true
}

// serveWarm answers peerWarmPath: it reads the PHP session the caller
// names, logs in ahead for it and keeps the stream for warmLife.
func (cl *cluster) serveWarm(w http.ResponseWriter, r *http.Request) {
	id, sk, ok := peerSession(w, r)
	if !ok {
		return
	}
	if cl.reg.isClosing() {
		cl.metrics.clusterWarm.WithLabelValues("refused").Inc()
		writeError(w, ErrShuttingDown)
		return
	}
	if _, ok := cl.holds(sk); ok {
		w.WriteHeader(http.StatusNoContent) // here already: nothing to prepare
		return
	}
	fresh, err := cl.warms.reserve(sk)
	if err != nil {
		cl.metrics.clusterWarm.WithLabelValues("refused").Inc()
		writeError(w, err)
		return
	}
	if !fresh {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	ctx := r.Context()
	warm, ps, err := cl.prepare(ctx, id)
	if err != nil {
		cl.warms.remove(sk, nil)
		cl.metrics.clusterWarm.WithLabelValues("failed").Inc()
		cl.logger.Debug("cluster: preparing a session handed over", "session", sk[:8], "err", err)
		writeError(w, err)
		return
	}
	if !cl.warms.put(sk, warm, ps, func() { cl.metrics.clusterWarm.WithLabelValues("expired").Inc() }) {
		warm.Close()
		cl.metrics.clusterWarm.WithLabelValues("refused").Inc()
		writeError(w, ErrShuttingDown)
		return
	}
	cl.metrics.clusterWarm.WithLabelValues("prepared").Inc()
	w.WriteHeader(http.StatusNoContent)
}

// prepare logs in ahead for PHP session id, warmPreparing at a time,
// through the node's authentication limiter like any login; ps is the
// PHP session it read.
func (cl *cluster) prepare(ctx context.Context, id string) (*xmppconn.Warm, *phpsession.Session, error) {
	select {
	case cl.warms.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	defer func() { <-cl.warms.sem }()
	ps, err := cl.reg.reader.Lookup(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	r := cl.reg
	cfg := r.serverConfig(ps.Identity)
	cfg.Logger = cl.logger
	cfg.AuthGate = r.auth.gate(ps.Identity.User, credentials(ps.Identity))
	warm, err := xmppconn.Prepare(ctx, cfg, warmLife+time.Second)
	if err != nil && ctx.Err() == nil && !errors.Is(err, xmppconn.ErrAuth) {
		err = fmt.Errorf("%w: %w", errXMPP, err)
	}
	return warm, ps, err
}

// serveTake answers peerTakePath: the session's lease is claimed from the
// caller's (?lease=, which only the claim script compares: a lease that
// moved meanwhile is not taken) and the session is resumed here, on its
// warm stream if one waits. The login does not end with the caller's
// call (takeoverLoginTimeout), for the caller may give up first.
//
// The user waits for this take (the stopping node's calls for them are
// held until it answers), so it does what it can ahead: the PHP session
// is the one the preparation read (warmLife ago at most; a user who
// logged out meanwhile is ended by the janitor's next pass, as at any
// time), read again only when no warm stream waits, and the claim reads
// the session's state in the same script (takeHanded). What is left is
// one script, the resumption's round trip to the Jabber server and the
// online mark.
func (cl *cluster) serveTake(w http.ResponseWriter, r *http.Request) {
	id, sk, ok := peerSession(w, r)
	if !ok {
		return
	}
	start := time.Now()
	from, err := parseLease(r.URL.Query().Get("lease"))
	if err != nil {
		cl.dropWarm(sk)
		writeError(w, fmt.Errorf("%w: lease: %w", ErrBadRequest, err))
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), takeoverLoginTimeout)
	defer cancel()
	ps := cl.warms.session(sk)
	if ps == nil {
		ps, err = cl.reg.reader.Lookup(ctx, id)
	}
	if err == nil {
		var res claimResult
		if res, err = cl.takeHanded(ctx, sk, from); err == nil && !res.won {
			err = fmt.Errorf("%w: node %s holds it", ErrNotOwner, res.lease.node)
		}
	}
	var s *session
	if err == nil {
		s, _, err = cl.reg.connect(ctx, id, ps, nil)
	}
	cl.dropWarm(sk)    // not used: taken by another node, or failed
	cl.dropClaimed(sk) // not loaded: the take failed before the resumption
	if err != nil {
		cl.logger.Debug("cluster: taking a session handed over", "session", sk[:8], "err", err)
		writeError(w, err)
		return
	}
	cl.reg.remember(s, id)
	cl.metrics.clusterTake.Observe(time.Since(start).Seconds())
	cl.logger.Info("cluster: a session handed over resumed here", "user", s.user, "session", s.short, "from", from.node)
	w.WriteHeader(http.StatusNoContent)
}

// claimedState is the state a take's claim read with lease l.
type claimedState struct {
	l  lease
	in stored
}

// takeHanded is take for a session handed over by the holder of lease
// from: the claim reads the session's state in the same script
// (claimLoadScript), kept for the resumption's load (cluster.load). A
// session held here already, or not taken at once, goes the way of
// take, and its state is loaded as always.
func (cl *cluster) takeHanded(ctx context.Context, sk string, from lease) (claimResult, error) {
	if _, ok := cl.holds(sk); !ok {
		res, in, err := cl.ls.claimLoad(ctx, sk, from)
		if err != nil {
			return res, err
		}
		if res.won {
			// Kept before the lease is held here: any load of the session
			// (this take's, or a call's that claims it meanwhile) holds
			// the lease, so the first one takes this state, before a
			// write can make Redis's newer, and no later one finds it.
			cl.mu.Lock()
			if cl.claimed == nil {
				cl.claimed = map[string]claimedState{}
			}
			cl.claimed[sk] = claimedState{res.lease, in}
			cl.mu.Unlock()
			cl.hold(sk, res.lease)
			cl.metrics.clusterClaims.WithLabelValues("takeover").Inc()
			return res, nil
		}
	}
	return cl.take(ctx, sk, &from)
}

// preloaded returns, and forgets, the state the claim of lease l on sk
// read (takeHanded); ok false when there is none, or it was read with
// another lease.
func (cl *cluster) preloaded(sk string, l lease) (stored, bool) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	c, ok := cl.claimed[sk]
	if !ok {
		return stored{}, false
	}
	delete(cl.claimed, sk)
	return c.in, c.l == l
}

// dropClaimed forgets the state a take's claim read for sk, if its
// resumption did not load it.
func (cl *cluster) dropClaimed(sk string) {
	cl.mu.Lock()
	delete(cl.claimed, sk)
	cl.mu.Unlock()
}

// successors names, for each session of list, the peer address of the
// node the orphan rendezvous hash gives it among the live others (their
// liveness keys, read now); empty when no other node is alive.
func (cl *cluster) successors(ctx context.Context, list []string) (map[string]string, error) {
	members, err := cl.rdb.SMembers(ctx, nodesKey).Result()
	if err != nil {
		return nil, err
	}
	me := cl.ls.self.member()
	cmds, err := nodePeers(ctx, cl.rdb, members)
	if err != nil {
		return nil, err
	}
	var live []string
	peer := map[string]string{}
	for i, m := range members {
		if addr := cmds[i].Val(); m != me && addr != "" && addr != cl.ls.self.peer {
			live = append(live, m)
			peer[m] = addr
		}
	}
	out := make(map[string]string, len(list))
	if len(live) == 0 {
		return out, nil
	}
	for _, sk := range list {
		out[sk] = peer[rendezvous(live, sk)]
	}
	return out, nil
}

// askPeer posts to a peer route for PHP session id and reports whether
// the peer answered 204.
func (cl *cluster) askPeer(ctx context.Context, addr, pathQuery, id string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+pathQuery, http.NoBody)
	if err != nil {
		return false
	}
	req.Header.Set("Authorization", "Bearer "+cl.secret)
	req.Header.Set("X-Session-Id", id)
	resp, err := cl.peer.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusNoContent
}

// takeBy asks the successor at addr, which prepared PHP session id, to
// take it now from lease l (after the stream's detach), and reports
// whether it did.
func (cl *cluster) takeBy(ctx context.Context, addr, id string, l lease) bool {
	ctx, cancel := context.WithTimeout(ctx, handoffTakeWait)
	defer cancel()
	return cl.askPeer(ctx, addr, peerTakePath+"?lease="+url.QueryEscape(l.String()), id)
}
