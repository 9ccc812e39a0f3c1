package sidecar

import (
	"errors"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// TestClusterHeldBacklog runs the browser backlog's state operations
// ('K', 'k') against a real Redis and a 3-master Redis Cluster: what
// arrived while no browser was attached comes back on the node taking the
// session over, in order and bounded like the bridge's backlog; what a
// browser took never comes back; another user of the same PHP session
// gets nothing of it.
func TestClusterHeldBacklog(t *testing.T) {
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec(t)
			a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
			ctx := t.Context()
			sk := sessionKey("held-backlog-aaaaaaaaaaaaaaa")
			s, la := heldOwner(t, a, sk)
			cs := s.durable
			const keep = 3
			br := s.bridgeOf(2, keep, a.metrics)
			var h uint32
			inbound := func(br *bridge, cs *clusterSession, body string) {
				t.Helper()
				br.fromServer(bobSays(t, body)) // the Tap runs before the stanza's count
				h++
				if err := cs.Handled(h); err != nil {
					t.Fatal(err)
				}
			}
			// No browser attached: five messages, the backlog keeps three.
			for i := 1; i <= 5; i++ {
				inbound(br, cs, "held-"+strconv.Itoa(i))
			}
			// A page takes the first of them (a BOSH answer of one stanza).
			c, err := br.attach(func() {})
			if err != nil {
				t.Fatal(err)
			}
			br.markReady(c)
			if got := c.take(1); len(got) != 1 || !strings.Contains(string(got[0]), "held-3") {
				t.Fatalf("the page took %q, want held-3 (the oldest kept)", got)
			}
			// A message the page takes before its count is written is
			// not written for browsers at all.
			br.fromServer(bobSays(t, "fast"))
			for _, raw := range c.take(1 << 20) {
				if strings.Contains(string(raw), "held-") {
					continue // held-4 and held-5, taken too: forgotten
				}
				if !strings.Contains(string(raw), ">fast<") {
					t.Fatalf("unexpected %q", raw)
				}
			}
			h++
			if err := cs.Handled(h); err != nil {
				t.Fatal(err)
			}
			br.detach(c)
			// Two more arrive while no page is attached.
			inbound(br, cs, "late-1")
			inbound(br, cs, "late-2")

			// a dies; b takes the session over and its first bridge has
			// exactly the two, in order.
			a.wg.Wait()
			if _, err := b.take(ctx, sk, &la); err != nil {
				t.Fatal(err)
			}
			s2, br2, c2 := heldPage(t, b, sk, "alice", keep)
			got := c2.take(1 << 20)
			if len(got) != 2 || !strings.Contains(string(got[0]), ">late-1<") || !strings.Contains(string(got[1]), ">late-2<") {
				t.Fatalf("the new owner's first page got %q, want late-1 and late-2", got)
			}
			// Taken: a third node would find nothing.
			in, err := b.load(ctx, sk)
			if err != nil {
				t.Fatal(err)
			}
			if items, next := parseHeld(in.meta); len(items) != 0 || next != 8 {
				t.Fatalf("after the page took them Redis holds %d stanzas, last number %d (want 0, 8)", len(items), next)
			}
			// One more for nobody, then the PHP session's user changes:
			// the new user's bridge gets nothing of alice's, and Redis
			// forgets it.
			br2.detach(c2)
			br2.fromServer(bobSays(t, "secret"))
			if err := s2.durable.Handled(h + 1); err != nil {
				t.Fatal(err)
			}
			s3, _, c3 := heldPage(t, b, sk, "mallory", keep)
			if got := c3.take(1 << 20); len(got) != 0 {
				t.Fatalf("another user of the PHP session got %q", got)
			}
			s3.appendState(xmppconn.StateConnecting, "") // the new user's first write
			in, err = b.load(ctx, sk)
			if err != nil {
				t.Fatal(err)
			}
			if items, _ := parseHeld(in.meta); len(items) != 0 {
				t.Fatalf("alice's backlog left in Redis for mallory's session: %d stanzas", len(items))
			}
		})
	}
}

// TestClusterHeldBacklogFenced: the browser backlog's operations ('K',
// 'k') write nothing under a stale fencing token or a forged lease. Once
// b took the session over, a's stanza kept for browsers (with its count)
// is refused and a's "a browser took them" is not written: Redis's
// backlog stays as b found it. The script sent directly with a's old
// lease, or with b's token under another node's name, answers 0 and
// writes nothing either.
func TestClusterHeldBacklogFenced(t *testing.T) {
	for _, tc := range redisSpecs() {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec(t)
			a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
			ctx := t.Context()
			sk := sessionKey("held-fenced-aaaaaaaaaaaaaaaa")
			s, la := heldOwner(t, a, sk)
			cs := s.durable
			br := s.bridgeOf(2, 3, a.metrics)
			for i := 1; i <= 2; i++ {
				br.fromServer(bobSays(t, "held-"+strconv.Itoa(i)))
				if err := cs.Handled(uint32(i)); err != nil {
					t.Fatal(err)
				}
			}
			a.wg.Wait()
			rb, err := b.take(ctx, sk, &la)
			if err != nil || !rb.won || rb.lease.token <= la.token {
				t.Fatalf("b's takeover: %+v %v", rb, err)
			}
			backlog := func() map[string]string {
				t.Helper()
				in, err := b.load(ctx, sk)
				if err != nil {
					t.Fatal(err)
				}
				m := map[string]string{}
				for f, v := range in.meta {
					if f == "bl" || f == "bn" || f == "bb" || f[0] == 'k' {
						m[f] = v
					}
				}
				return m
			}
			before := backlog()
			if items, next := parseHeld(before); len(items) != 2 || next != 2 {
				t.Fatalf("before: Redis holds %d stanzas, last number %d (want 2, 2)", len(items), next)
			}
			// a, its lease stale: one more stanza for browsers, with its
			// count, then a browser taking all.
			br.fromServer(bobSays(t, "stale"))
			if err := cs.Handled(3); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("the stale owner's count with its K: %v", err)
			}
			cs.tookHeld(3)
			a.wg.Wait()
			if got := backlog(); !maps.Equal(got, before) {
				t.Fatalf("the stale owner changed the backlog: %v, was %v", got, before)
			}
			// The script itself, under a's old token and under b's token
			// with another node's name.
			for _, l := range []lease{la, {token: rb.lease.token, node: "c", incarnation: "i-c", peer: "127.0.0.1:1"}} {
				n, err := stateScript.Run(ctx, a.rdb, keysOf(sk).stateKeys(), l.String(), time.Minute.Milliseconds(), (5 * time.Second).Milliseconds(),
					"K", "9", "<message><body>forjada</body></message>", 3, maxHeldBytes, "k", "2").Int()
				if err != nil || n != 0 {
					t.Fatalf("K and k under the lease %s: %d %v, want 0", l, n, err)
				}
			}
			if got := backlog(); !maps.Equal(got, before) {
				t.Fatalf("a fenced-out script changed the backlog: %v, was %v", got, before)
			}
		})
	}
}

// heldOwner is alice's session owned by node cl and resumable (saved
// with a stream id), so that its stanzas for browsers ride on their
// counts.
func heldOwner(t *testing.T, cl *cluster, sk string) (*session, lease) {
	t.Helper()
	s, l := ownedSession(t, cl, sk, "alice")
	s.jid = "alice@example.org"
	if err := s.durable.Save(xmppconn.ResumeState{V: 1, JID: "alice@example.org/web-" + sk[:8], ID: "sm-held", Max: 300}); err != nil {
		t.Fatal(err)
	}
	return s, l
}

// heldPage is user's session loaded on node cl, as by a node taking it
// over, with a page attached to its bridge (keep stanzas kept for
// browsers) and ready.
func heldPage(t *testing.T, cl *cluster, sk, user string, keep int) (*session, *bridge, *bridgeClient) {
	t.Helper()
	s, _ := stateSession(t, cl, sk, user)
	s.jid = user + "@example.org"
	br := s.bridgeOf(2, keep, cl.metrics)
	c, err := br.attach(func() {})
	if err != nil {
		t.Fatal(err)
	}
	br.markReady(c)
	return s, br, c
}

// bobSays is a chat message from bob to alice, as the server sends it.
func bobSays(t *testing.T, body string) *xmppconn.Stanza {
	t.Helper()
	st, err := xmppconn.ParseStanza([]byte(`<message xmlns="jabber:client" from="bob@example.org/desk" to="alice@example.org" type="chat"><body>`+body+`</body></message>`), 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
