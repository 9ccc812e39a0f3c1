package sidecar

import (
	"cmp"
	"slices"
	"strconv"
)

// The browser backlog in cluster mode (docs/CLUSTER.md, "Browser
// streams"). Every message and subscription request the bridge routes to
// browsers is numbered and written to the session's state in Redis with
// the inbound stanza's count (state operation 'K', in the same script as
// the stanza's events and h), and forgotten there once a browser has it
// ('k'): a WebSocket's browser answered the ping sent after the frame
// that carried it (wsack.go), or a BOSH page acknowledged the answer
// that carried it (bosh.go, acknowledge). A node taking the session over
// seeds its bridge's backlog with what no browser had: a message that
// arrived while no page was attached (a reload, a navigation), that the
// page's last BOSH answer carried, or that its WebSocket wrote with no
// pong since, when the node died, reaches the next page even when the
// node that held it died before the page came back. On a single node (no
// clusterSession) nothing is numbered.

// heldStanza is a stanza kept for browsers in Redis, with its number.
type heldStanza struct {
	seq uint64
	raw []byte
}

// heldRef is one numbered stanza a bridge routed, by its bytes (the same
// slice is kept, pushed to every client and taken).
type heldRef struct {
	p   *byte
	seq uint64
}

// heldBook numbers the stanzas a bridge routes to browsers and tells
// which a transport took; b.mu guards it.
type heldBook struct {
	next  uint64 // the last number given
	seqOf map[*byte]uint64
	order []heldRef // in number order, at most the bridge's keep
}

// number gives raw the next number. b.mu is held.
func (b *bridge) numberLocked(raw []byte) uint64 {
	h := &b.book
	h.next++
	if h.seqOf == nil {
		h.seqOf = map[*byte]uint64{}
	}
	h.seqOf[&raw[0]] = h.next
	h.order = append(h.order, heldRef{p: &raw[0], seq: h.next})
	for len(h.order) > max(b.keep, 1) {
		delete(h.seqOf, h.order[0].p)
		h.order = h.order[1:]
	}
	return h.next
}

// topOf reports the highest number among the stanzas a transport just
// took (0: none numbered).
func (b *bridge) topOf(list [][]byte) uint64 {
	if b.cs == nil || len(list) == 0 {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var top uint64
	for _, raw := range list {
		if len(raw) > 0 {
			top = max(top, b.book.seqOf[&raw[0]])
		}
	}
	return top
}

// acked forgets every number up to seq, here and in Redis: a page has
// the stanzas (a client's queue is in arrival order, so what came before
// reached a page too). seq 0 does nothing.
func (b *bridge) acked(seq uint64) {
	if b.cs == nil || seq == 0 {
		return
	}
	b.mu.Lock()
	h := &b.book
	n := 0
	for n < len(h.order) && h.order[n].seq <= seq {
		delete(h.seqOf, h.order[n].p)
		n++
	}
	h.order = h.order[n:]
	b.mu.Unlock()
	b.cs.tookHeld(seq)
}

// seedHeld gives a new bridge what Redis held for browsers when the
// session was taken over, and the numbering to continue from. b.mu need
// not be held: the bridge is not published yet.
func (b *bridge) seedHeld(items []heldStanza, next uint64) {
	b.book.next = next
	for _, it := range items {
		if len(it.raw) == 0 {
			continue
		}
		b.keepLocked(it.raw)
		if b.book.seqOf == nil {
			b.book.seqOf = map[*byte]uint64{}
		}
		b.book.seqOf[&it.raw[0]] = it.seq
		b.book.order = append(b.book.order, heldRef{p: &it.raw[0], seq: it.seq})
		b.book.next = max(b.book.next, it.seq)
	}
}

// durableKind reports whether a stanza routed to browsers is kept for the
// next one when none is attached (bridge.fromServer), and so in Redis.
func durableKind(kind, typ string) bool {
	return kind == "message" || (kind == "presence" && typ == "subscribe")
}

// clusterHeld is a clusterSession's part of the browser backlog; cs.mu
// guards it.
type clusterHeld struct {
	next    uint64       // the last number written or seeded
	took    uint64       // the last number a browser took: not written again
	pending []heldStanza // waiting for their stanza's count (Handled)
	keep    int
	seed    []heldStanza // what a takeover loaded, for the bridge made next
}

// keepHeld writes a stanza routed to browsers: with its inbound stanza's
// count (Handled) when the stream reports counts, at once otherwise.
func (cs *clusterSession) keepHeld(seq uint64, raw []byte, keep int) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	h := &cs.held
	h.keep = keep
	h.next = max(h.next, seq)
	if seq <= h.took {
		return // a browser took it already
	}
	h.pending = append(h.pending, heldStanza{seq: seq, raw: raw})
	if !cs.resumable.Load() {
		cs.presOps = h.opsInto(cs.presOps)
		cs.writeLocked(nil, nil, false)
	}
}

// opsInto moves the pending stanzas into ops as 'K' operations.
func (h *clusterHeld) opsInto(ops []any) []any {
	for _, it := range h.pending {
		ops = append(ops, "K", strconv.FormatUint(it.seq, 10), it.raw, h.keep, maxHeldBytes)
	}
	h.pending = nil
	return ops
}

// tookHeld forgets in Redis the stanzas up to seq: a browser stream took
// them.
func (cs *clusterSession) tookHeld(seq uint64) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	h := &cs.held
	if seq <= h.took {
		return
	}
	h.took = seq
	h.pending = slices.DeleteFunc(h.pending, func(it heldStanza) bool { return it.seq <= seq })
	cs.presOps = append(cs.presOps, "k", strconv.FormatUint(seq, 10))
	cs.writeLocked(nil, nil, false)
}

// heldSeed hands the session's first bridge what a takeover loaded.
// cs.mu is taken; the caller holds the session's mu (bridgeOf).
func (cs *clusterSession) heldSeed() ([]heldStanza, uint64) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	seed := cs.held.seed
	cs.held.seed = nil
	return seed, cs.held.next
}

// seedHeld keeps what load found for browsers: the user's own, or, when
// the meta hash is another user's (the PHP session's user changed), an
// order to forget it.
func (cs *clusterSession) seedHeld(sv savedSession) {
	h := &cs.held
	h.next = sv.heldNext
	if !sv.heldOK {
		if sv.heldNext > 0 {
			cs.presOps = append(cs.presOps, "k", strconv.FormatUint(sv.heldNext, 10))
		}
		return
	}
	h.seed = sv.held
}

// parseHeld reads the browser backlog from a session's meta hash: fields
// "k<number>", and "bn" the last number given.
func parseHeld(meta map[string]string) (items []heldStanza, next uint64) {
	next, _ = strconv.ParseUint(meta["bn"], 10, 64)
	for f, v := range meta {
		if len(f) < 2 || f[0] != 'k' || v == "" {
			continue
		}
		seq, err := strconv.ParseUint(f[1:], 10, 64)
		if err != nil {
			continue
		}
		items = append(items, heldStanza{seq: seq, raw: []byte(v)})
		next = max(next, seq)
	}
	slices.SortFunc(items, func(a, b heldStanza) int { return cmp.Compare(a.seq, b.seq) })
	return items, next
}
