package sidecar

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// The graceful hand-over (docs/CLUSTER.md, "SIGTERM"): in cluster mode a
// node being stopped does not log its users out. Once its API has answered
// the held polls and drained, it answers the polls other nodes forwarded
// to it, lets every session go without a word to the Jabber server or the
// contacts (xmppconn.Conn.Detach: no unavailable, no </stream>; the server
// keeps the session hibernating), gives each lease back fenced, leaving the
// user marked online and in this node's orphan index, and deletes its
// liveness key. The next call of each user, on any node, claims the free
// lease and resumes the stream there; a user who makes no call is resumed
// by the node the rendezvous hash names (clusterorphan.go). Calls other
// nodes forward meanwhile wait for their session's lease to be given back
// (or the hand-over's end, for a session it does not hand over), then are
// told not_owner and route again.

// handoffInFlight bounds the sessions let go of at once. Each one's user
// waits from its turn to its successor's take, and the takes share the
// nodes' few cores: more in flight hands over no faster once those are
// busy, it only makes each user wait longer (a user's wait is about the
// sessions in flight over the rate they are taken at). With 32, each a
// few round trips, the cores still set the pace, not the bound
// (docs/FAULTS.md, "The take").
const handoffInFlight = 32

// handoffDrain bounds the wait for forwarded calls already being served
// before the streams are let go (a send in flight completes rather than
// fails and is retried elsewhere).
const handoffDrain = 2 * time.Second

// handoffLeftMax bounds the part of the shutdown's time kept, at its
// end, for the sessions the hand-over has not let go by then (a fifth of
// the time when that is less): they are detached, not closed, and their
// leases given back in one pipeline (letGoLeft). Closed, as on a single
// node, each one's contacts saw it go offline and the Jabber server
// ended its session, so the next owner's resumption was refused and the
// user logged in afresh, the page told recovered:false: at 2,000 users
// a stop on the shared 2-core machine let go of 184 of its 667 sessions
// in its 10 s, and closed 422 (docs/FAULTS.md).
const handoffLeftMax = 2 * time.Second

// peerDrain bounds the peer listener's drain after the hand-over, when
// every forwarded call has had its answer: a connection a peer opened
// and sent nothing on yet would hold net/http's Shutdown for 5 s.
const peerDrain = time.Second

// handoff is a node's hand-over state, shared by the peer listener's
// gate and the shutdown.
type handoff struct {
	mu sync.Mutex
	on bool // handing over: forwarded calls wait for done
	// polls ends when the hand-over starts: the forwarded polls and SSE
	// streams held here answer with what they have.
	polls    context.Context
	endPolls context.CancelFunc
	inflight sync.WaitGroup // forwarded calls being served, polls aside
	done     chan struct{}  // closed once every lease is given back
	// pending has a channel per session being handed over, closed once
	// its lease is given back: a forwarded call waits for its session
	// only, not for all of them.
	pending map[string]chan struct{}
	// turn has an entry per session handed over whose turn has not come
	// yet: its forwarded calls are still served here meanwhile (its
	// stream is), counted, its polls ended when its turn comes.
	turn map[string]*handoffTurn
}

// handoffTurn is a session waiting for its turn in the hand-over.
type handoffTurn struct {
	come  context.Context // canceled when its turn comes
	start context.CancelFunc
	calls sync.WaitGroup // its forwarded calls being served
}

// running reports whether the hand-over has started (false for none).
func (h *handoff) running() bool {
	if h == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.on
}

func newHandoff() *handoff {
	h := &handoff{done: make(chan struct{})}
	h.polls, h.endPolls = context.WithCancel(context.Background())
	return h
}

// handoffGate wraps the peer listener's routes. While the node hands its
// sessions over, a forwarded call for a session whose turn has not come
// yet is served here as before (its poll ended when the turn comes, the
// turn waiting for its other calls); once its turn came, a call waits
// until the session is taken or its lease given back (until the end, for
// a session not handed over or a call naming none) and is answered 409
// not_owner, so that the node it came through routes it again (to the
// successor, or the lease, free by then); before, forwarded polls are
// ended by the hand-over's start and other calls are counted, so that the
// hand-over lets the streams go only once they are answered.
func (cl *cluster) handoffGate(inner http.Handler) http.Handler {
	h := cl.handoff
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		switch {
		case h.on:
			var mine chan struct{} // nil (never ready) for a session not being handed over
			if id := r.Header.Get("X-Session-Id"); id != "" {
				sk := sessionKey(id)
				if t := h.turn[sk]; t != nil && strings.HasPrefix(r.URL.Path, "/v1/") {
					t.calls.Add(1)
					h.mu.Unlock()
					defer t.calls.Done()
					ctx, cancel := context.WithCancel(r.Context())
					defer cancel()
					if r.Method == http.MethodGet && r.URL.Path == "/v1/events" {
						stop := context.AfterFunc(t.come, cancel)
						defer stop()
					}
					inner.ServeHTTP(w, r.WithContext(ctx))
					return
				}
				mine = h.pending[sk]
			}
			h.mu.Unlock()
			select {
			case <-mine:
				writeError(w, ErrNotOwner)
			case <-h.done:
				writeError(w, ErrNotOwner)
			case <-r.Context().Done():
			}
		case r.Method == http.MethodGet && r.URL.Path == "/v1/events":
			h.mu.Unlock()
			ctx, cancel := context.WithCancel(r.Context())
			defer cancel()
			stop := context.AfterFunc(h.polls, cancel)
			defer stop()
			inner.ServeHTTP(w, r.WithContext(ctx))
		case strings.HasPrefix(r.URL.Path, "/v1/"):
			h.inflight.Add(1)
			h.mu.Unlock()
			defer h.inflight.Done()
			inner.ServeHTTP(w, r)
		default:
			// Browser streams: the hand-over ends them with their bridge.
			h.mu.Unlock()
			inner.ServeHTTP(w, r)
		}
	})
}

// writeError answers err as every API error is answered (statusFor).
func writeError(w http.ResponseWriter, err error) {
	status, code := statusFor(err)
	var body errorBody
	body.Error.Code, body.Error.Message = code, err.Error()
	writeJSON(w, status, body)
}

// handOver hands every session this node holds to the cluster, bounded by
// ctx (the shutdown timeout); on a single node (nil) it does nothing and
// the shutdown closes the streams as always.
//
// It is a pipeline (docs/CLUSTER.md, "SIGTERM"): each session's successor
// is asked to prepare it (clusterwarm.go), handoffAsks at a time, while
// this node goes on serving it, and a session is let go, and taken by
// its successor, as soon as its successor has prepared it. A user thus
// waits for one take, never for a login, however long the others'
// preparations take: at 2,000 users a node's 667 preparations took
// longer than any fixed part of the timeout, and the sessions detached
// before theirs was ready waited for a whole login each. The asks stop
// when two thirds of the time left have passed; the sessions not
// prepared by then are let go plainly (their leases given back, for the
// user's next call or the orphan adoption).
func (cl *cluster) handOver(ctx context.Context) {
	if cl == nil {
		return
	}
	h := cl.handoff
	start := time.Now()
	r := cl.reg
	r.mu.Lock()
	r.closing = true // no stream is opened here any more
	r.mu.Unlock()
	cl.warms.close() // nothing is handed to this node any more
	var list []handed
	for _, s := range r.snapshot() {
		if l, ok := cl.holds(s.key); ok && s.live() {
			list = append(list, handed{s, l})
		}
	}
	h.mu.Lock()
	h.on = true
	h.pending = make(map[string]chan struct{}, len(list))
	h.turn = make(map[string]*handoffTurn, len(list))
	for _, it := range list {
		h.pending[it.s.key] = make(chan struct{})
		t := &handoffTurn{}
		t.come, t.start = context.WithCancel(context.Background())
		h.turn[it.s.key] = t
	}
	h.mu.Unlock()
	defer close(h.done)
	defer func() {
		for _, it := range list {
			h.endTurn(it.s.key) // any not let go (not live, not held)
		}
	}()
	h.endPolls()
	// The renewals and the heartbeat stopped with the shutdown; they go
	// on here until every session is let go, for the preparations can
	// outlast a lease's TTL, and the liveness key's: the others must not
	// see this node gone, and sweep its orphans, before it has let them
	// go. The first renewal runs now: the sessions' writes kept back by a
	// slow Redis are tried again at once rather than after the usual
	// pause.
	cl.renew(ctx)
	cl.redisDown.Store(0)
	rctx, rstop := context.WithCancel(ctx)
	renewing := make(chan struct{})
	go func() { defer close(renewing); cl.run(rctx, cl.heartbeat) }()
	drained := make(chan struct{})
	go func() { h.inflight.Wait(); close(drained) }()
	dctx, cancel := context.WithTimeout(ctx, handoffDrain)
	select {
	case <-drained:
	case <-dctx.Done():
	}
	cancel()
	// The sessions are let go until by; what is left then is detached
	// in the time kept after it.
	by, byCancel := ctx, context.CancelFunc(func() {})
	if dl, ok := ctx.Deadline(); ok {
		by, byCancel = context.WithDeadline(ctx, dl.Add(-min(handoffLeftMax, time.Until(dl)/5)))
	}
	p := cl.handOverAll(by, ctx, list)
	byCancel()
	rstop()
	<-renewing
	left := cl.letGoLeft(ctx, list)
	// Only now may the others see this node gone and resume its users
	// (before, its leases were not free yet). The watcher stopped with the
	// shutdown; it must not write the key again.
	select {
	case <-cl.orphans.stopped:
	case <-ctx.Done():
	}
	dctx, dcancel := redisBound(ctx) // a stalled Redis must not take the rest of the shutdown
	err := cl.rdb.Del(dctx, nodeKeyPrefix+cl.ls.self.member()).Err()
	dcancel()
	if err != nil {
		cl.logger.Warn("cluster: deleting this node's liveness key; the others find it gone when it expires", "err", err)
	}
	cl.logger.Info("cluster: sessions handed over to the other nodes", "sessions", p.n.Load(), "taken", p.taken.Load(),
		"moved", p.moved.Load(), "prepared", p.prepared.Load(), "left", left, "took", time.Since(start).Round(time.Millisecond))
}

// heartbeat sets this node's liveness key again, as the orphan watcher
// does until the shutdown stops it, while the hand-over runs.
func (cl *cluster) heartbeat(ctx context.Context) {
	bctx, cancel := context.WithTimeout(ctx, cl.ls.ttl/3)
	defer cancel()
	err := cl.ls.beatClient().Set(bctx, nodeKeyPrefix+cl.ls.self.member(), cl.ls.self.peer, cl.ls.ttl).Err()
	if err != nil && ctx.Err() == nil {
		cl.logger.Debug("cluster: node heartbeat during the hand-over", "err", err)
	}
}

// handed is a session this node hands over, with the lease it held when
// the hand-over started.
type handed struct {
	s *session
	l lease
}

// handOverCount is what handOverAll did: sessions let go, prepared by
// their successor, taken by it at once, and found moved by then (taken
// after the asker stopped waiting, or claimed by a call elsewhere).
type handOverCount struct{ n, prepared, taken, moved atomic.Int64 }

// handOverAll runs the hand-over's pipeline over list (handOver) and
// returns once every session is let go, or by ended: no session's turn
// starts after by, nor does a take wait past it; a session whose turn
// came finishes within ctx, the shutdown's.
func (cl *cluster) handOverAll(by, ctx context.Context, list []handed) *handOverCount {
	var c handOverCount
	ids := make(map[string]string, len(list)) // session key → PHP session id
	keys := make([]string, 0, len(list))
	for _, it := range list {
		if id := cl.reg.idOf(it.s); id != "" {
			ids[it.s.key] = id
			keys = append(keys, it.s.key)
		}
	}
	sctx, scancel := redisBound(ctx)
	succ, err := cl.successors(sctx, keys)
	scancel()
	if err != nil || len(succ) == 0 {
		cl.logger.Info("cluster: no other node to prepare the hand-over; sessions are resumed at their next call", "err", err)
	}
	askBy := time.Now()
	if dl, ok := by.Deadline(); ok {
		askBy = askBy.Add(time.Until(dl) * 2 / 3)
	}
	actx, acancel := context.WithDeadline(by, askBy)
	defer acancel()
	var lets, asking sync.WaitGroup
	sem := make(chan struct{}, handoffInFlight)
	// let lets one session go, handoffInFlight at a time; addr names the
	// successor that prepared it ("" for none).
	let := func(it handed, addr string) {
		select {
		case sem <- struct{}{}:
		case <-by.Done():
			return // letGoLeft detaches it
		}
		if by.Err() != nil {
			<-sem
			return
		}
		defer func() { <-sem }()
		l, ok := cl.holds(it.s.key)
		if !ok || l != it.l || !it.s.live() {
			cl.handoff.endTurn(it.s.key) // its calls wait for the end
			return
		}
		c.n.Add(1)
		switch cl.handOverOne(by, ctx, it.s, l, addr, ids[it.s.key]) {
		case handTaken:
			c.taken.Add(1)
		case handMoved:
			c.moved.Add(1)
		}
	}
	var mu sync.Mutex
	var rest []handed // not prepared: let go once the asks are over
	asks := make(chan struct{}, handoffAsks)
	for _, it := range list {
		addr := succ[it.s.key]
		if addr != "" && actx.Err() == nil {
			select {
			case asks <- struct{}{}:
			case <-actx.Done():
			}
		}
		if addr == "" || actx.Err() != nil {
			mu.Lock()
			rest = append(rest, it)
			mu.Unlock()
			continue
		}
		asking.Go(func() {
			ok := cl.askPeer(actx, addr, peerWarmPath, ids[it.s.key])
			<-asks
			if !ok {
				mu.Lock()
				rest = append(rest, it)
				mu.Unlock()
				return
			}
			c.prepared.Add(1)
			lets.Go(func() { let(it, addr) })
		})
	}
	asking.Wait()
	for _, it := range rest {
		lets.Go(func() { let(it, "") })
	}
	lets.Wait()
	return &c
}

// handOutcome is what became of one session handed over at shutdown: the
// result label of imsidecar_cluster_handoffs_total.
type handOutcome string

const (
	handTaken    handOutcome = "taken"    // the successor took it at once
	handMoved    handOutcome = "moved"    // another node had claimed it by the release
	handDetached handOutcome = "detached" // its lease given back: the next call or the orphan adoption resumes it
	handClosed   handOutcome = "closed"   // its stream was closed, not detached resumable
	handFailed   handOutcome = "failed"   // Redis did not take the lease back: it expires
)

// handOverOne lets one session go and, when its successor (addr, "" for
// none) prepared it, has the successor take it at once for PHP session id
// (clusterwarm.go); otherwise gives its lease back, for the user's next
// call or the orphan adoption. Its calls' drain and the take end by by;
// the detach and the release, within ctx. It returns the outcome, counted
// in imsidecar_cluster_handoffs_total.
func (cl *cluster) handOverOne(by, ctx context.Context, s *session, l lease, addr, id string) handOutcome {
	cl.handoff.turnOf(by, s.key)
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	detached := cl.reg.letGo(dctx, s, "shutdown")
	cancel()
	result := handClosed
	if detached {
		result = handDetached
	}
	if detached && addr != "" && cl.takeBy(by, addr, id, l) {
		result = handTaken
		cl.drop(s.key, l) // the successor's now: nothing to give back
	} else if given, err := cl.dropRelease(ctx, s.key, l); err != nil {
		result = handFailed
		cl.logger.Warn("cluster: giving a lease back at shutdown; it expires instead", "session", s.short, "err", err)
	} else if !given && detached {
		// The lease was no longer this node's: the successor's take
		// landed after handoffTakeWait (it goes on without the asker),
		// or a call claimed the session elsewhere. Either way it moved
		// at once; counted apart, for "detached" says it waits.
		result = handMoved
	}
	h := cl.handoff
	h.mu.Lock()
	if ch := h.pending[s.key]; ch != nil {
		close(ch) // its calls, waiting or to come, are told not_owner now
	}
	h.mu.Unlock()
	cl.metrics.clusterHandoffs.WithLabelValues(string(result)).Inc()
	return result
}

// letGoLeft lets go of the sessions of list the hand-over left when its
// time ran out (handoffLeftMax): all at once, each detached silently as in
// its turn (letGo: no unavailable, no </stream>; the Jabber server keeps
// its session for the next owner to resume, as after a kill -9), then
// their leases given back in one pipeline, fenced, so that their users'
// next calls, or the orphan adoption, resume them at once. It returns how
// many it let go; each is counted in imsidecar_cluster_handoffs_total
// (detached, closed for a stream that could not be detached, failed when
// Redis did not take the leases back: they expire).
func (cl *cluster) letGoLeft(ctx context.Context, list []handed) int {
	var (
		mu     sync.Mutex
		back   = map[string]lease{}
		wg     sync.WaitGroup
		closed atomic.Int64 // streams that could not be detached
	)
	for _, it := range list {
		l, ok := cl.holds(it.s.key)
		if !ok || l != it.l || !it.s.live() {
			continue
		}
		wg.Go(func() {
			cl.handoff.endTurn(it.s.key) // its polls end; its calls wait for the hand-over's end
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			detached := cl.reg.letGo(dctx, it.s, "shutdown")
			cancel()
			if !detached {
				closed.Add(1)
			}
			mu.Lock()
			back[it.s.key] = l
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(back) == 0 {
		return 0
	}
	cl.releaseMu.RLock()
	mine := make(map[string]lease, len(back))
	for sk, l := range back {
		if cl.drop(sk, l) {
			mine[sk] = l
		}
	}
	err := cl.ls.releaseAll(ctx, mine)
	cl.releaseMu.RUnlock()
	given := handDetached
	if err != nil {
		given = handFailed
		cl.logger.Warn("cluster: giving leases back at shutdown; they expire instead", "leases", len(mine), "err", err)
	}
	n := closed.Load()
	cl.metrics.clusterHandoffs.WithLabelValues(string(handClosed)).Add(float64(n))
	cl.metrics.clusterHandoffs.WithLabelValues(string(given)).Add(float64(int64(len(back)) - n))
	return len(back)
}

// endTurn ends session sk's turn without waiting for its calls: they
// are answered as the hand-over ends.
func (h *handoff) endTurn(sk string) {
	h.mu.Lock()
	t := h.turn[sk]
	delete(h.turn, sk)
	h.mu.Unlock()
	if t != nil {
		t.start()
	}
}

// turnOf starts session sk's turn: its calls from now on wait, its polls
// end, and the calls being served finish first (at most handoffDrain).
func (h *handoff) turnOf(ctx context.Context, sk string) {
	h.mu.Lock()
	t := h.turn[sk]
	delete(h.turn, sk)
	h.mu.Unlock()
	if t == nil {
		return
	}
	t.start()
	served := make(chan struct{})
	go func() { t.calls.Wait(); close(served) }()
	tm := time.NewTimer(handoffDrain)
	defer tm.Stop()
	select {
	case <-served:
	case <-tm.C:
	case <-ctx.Done():
	}
}

// letGo takes session s out of the registry and lets its stream go
// without ending the XMPP session, for another node to resume it: a lease
// lost (detach, reason "moved") or this node's shutdown (reason
// "shutdown"). Its browser streams end (system-shutdown at a shutdown,
// which clients reconnect on), its state becomes offline, its log stops
// and its waiting polls are answered with no event (a page's cursor must
// never be ahead of what the next owner has in Redis), and the stream is
// detached silently, or closed when it cannot be. It reports whether the
// stream was detached with its session resumable.
func (r *registry) letGo(ctx context.Context, s *session, reason string) bool {
	r.mu.Lock()
	if r.sessions[s.key] == s {
		delete(r.sessions, s.key)
	}
	r.mu.Unlock()
	r.idsMu.Lock()
	delete(r.ids, s.key)
	r.idsMu.Unlock()
	conn := s.takeStream(reason)
	s.setState(xmppconn.StateOffline, reason)
	s.log.stopAndWake()
	detached := false
	if conn != nil {
		if d, ok := conn.(detacher); ok {
			_, err := d.Detach(ctx)
			detached = err == nil
		} else {
			conn.Close(ctx)
		}
	}
	if reason == "shutdown" && s.durable != nil {
		// What a slow or failed Redis write kept back is written now,
		// while the lease is still this node's and before the log is
		// released (a release counts every event as acknowledged, which a
		// later write would trim from Redis): the next owner resumes from
		// what Redis holds.
		s.durable.flush()
	}
	r.mu.Lock()
	r.mem.release(s.log)
	r.mu.Unlock()
	return detached
}
