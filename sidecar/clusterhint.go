package sidecar

import (
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Owner hints (docs/CLUSTER.md, "How it works", routing). A call for a session
// another node holds ran the claim script each time, only to learn the
// owner it was then forwarded to: one Redis round trip for every call a
// page made through another node (round robin, a node taken out of the
// load balancer). In a takeover storm those claims, for the sessions of a
// frozen owner whose leases had not expired yet (none could succeed),
// filled a survivor's Redis pool for seconds: 400 to 1,000 claims a
// second, each waiting up to 2 s for a connection, and the claims that
// could take a session over, and the orphan adoptions, timed out behind
// them (issue 20 item 3 at 2,000 users).
//
// So a node remembers the lease the claim script answered and how long it
// had left in Redis, and forwards the session's next calls to that owner
// without asking Redis until the lease could have expired. A hint tells
// nothing a claim would not have: a lease another node holds changes only
// by expiring (the hint ends first: its end is counted from before the
// claim was sent), by being given back (a hand-over: the owner answers
// not_owner) or by being taken from an owner whose peer port refuses
// (the forward is refused); either answer drops the hint, and the call
// claims as before.
//
// The owner's answer to a forwarded call says how long its leases last
// in Redis at least (leaseLeftHeader, as the answer's header is written:
// a long poll's at its end), and the hint is extended by it: a session
// whose calls come through another node needs no claim at all while its
// owner holds it, instead of one each poll or lease period (at 2,000
// users with round robin, a few hundred claims a second on each node).
// The extension counts from when the answer arrived, so it may outlive
// the lease by the answer's transit: a hint only routes, the owner
// checks its lease itself, and a call sent on a stale hint is answered
// not_owner (or, to an owner frozen since, held as after a claim).
//
// While Redis does not answer the node's heartbeat, an ended hint routes
// too: the last owner known is asked, however old its hint. No lease can
// change hands without Redis, and a claim, were Redis there to answer
// it, would forward to that owner anyway (mayBeAlive). The owner serves
// its sessions from its table through the outage (cluster.mine), so the
// users calling through another node keep chatting too, instead of
// failing every call until Redis is back (issue 20 item 6; the node
// cannot read their PHP session then: forwardUnchecked). An owner gone
// meanwhile refuses the forward, one that gave the session back answers
// not_owner (or fails the call, Redis being away): the hint is dropped
// and the call fails, as without one. Once Redis answers, the calls
// claim as without hints (cluster.hint says why). So an ended hint is
// kept a while (endedHintKept), and none is pruned until Redis is
// steady again.

// leaseLeftHeader is the owner's answer header to a forwarded call: the
// milliseconds its leases last in Redis at least (cluster.leaseLeft).
const leaseLeftHeader = "Imsidecar-Lease-Left"

// leaseLeft is how long every lease this node holds lasts in Redis at
// least: a TTL from the start of its last renewal pass that reached
// Redis (each lease renewed then, or claimed since with a whole TTL), or
// nothing when that pass is a TTL old.
func (cl *cluster) leaseLeft() time.Duration {
	return max(0, cl.ls.ttl-time.Since(time.Unix(0, cl.renewed.Load())))
}

// tellLeaseLeft sets leaseLeftHeader on the answer to a forwarded call
// this node serves as the owner.
func (cl *cluster) tellLeaseLeft(h http.Header) {
	if left := cl.leaseLeft(); left > 0 {
		h.Set(leaseLeftHeader, strconv.FormatInt(left.Milliseconds(), 10))
	}
}

// leaseLeftOf reads leaseLeftHeader from an owner's answer, at most a
// TTL (0: none, or malformed).
func (cl *cluster) leaseLeftOf(h http.Header) time.Duration {
	ms, err := strconv.ParseInt(h.Get(leaseLeftHeader), 10, 64)
	if err != nil || ms <= 0 {
		return 0
	}
	return min(time.Duration(ms)*time.Millisecond, cl.ls.ttl)
}

// ownerHintsMax bounds the hints a node keeps (one a session it forwards
// for, pruned at the renewal passes): past it, a call claims as without
// hints.
const ownerHintsMax = 1 << 16

// endedHintKept is how long a hint is kept once ended, for a Redis
// outage to come: a session whose calls come through this node seldom (a
// page's long poll, a tab in the background) is routed through it too.
const endedHintKept = time.Minute

// ownerHints is a node's hints, by session key.
type ownerHints struct {
	mu sync.Mutex
	m  map[string]ownerHint
}

type ownerHint struct {
	l     lease
	until int64 // monoNow by which the lease may have expired in Redis
}

// get returns the owner hinted for sk at now, if any; with ended, a
// hint that has ended too.
func (h *ownerHints) get(sk string, now int64, ended bool) (lease, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.m[sk]
	if !ok || now >= e.until && !ended {
		return lease{}, false
	}
	return e.l, true
}

// put hints that l holds sk until until at the latest; a hint on the
// same lease that lasts longer is kept.
func (h *ownerHints) put(sk string, l lease, until int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[string]ownerHint{}
	}
	e, ok := h.m[sk]
	if !ok && len(h.m) >= ownerHintsMax || ok && e.l == l && e.until >= until {
		return
	}
	h.m[sk] = ownerHint{l: l, until: until}
}

// drop forgets the hint on sk.
func (h *ownerHints) drop(sk string) {
	h.mu.Lock()
	delete(h.m, sk)
	h.mu.Unlock()
}

// prune forgets the hints ended at before.
func (h *ownerHints) prune(before int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sk, e := range h.m {
		if before >= e.until {
			delete(h.m, sk)
		}
	}
}
