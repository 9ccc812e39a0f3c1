package sidecar_test

import (
	"net/http"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// TestClusterOwnerCutOffFromRedis: the node owning a session loses its
// link to Redis (the others keep theirs) for several lease TTLs, so its
// lease and its liveness key expire. It still serves its user, whose PHP
// calls it on its own web server; the others ask it over the peer
// listener before taking the session (or its orphans) over, hear that it
// holds the session, and forward the user's calls to it: no takeover, one
// login, no unavailable, nothing lost. When the link is back, its renewal
// sets the lease again.
func TestClusterOwnerCutOffFromRedis(t *testing.T) {
	srv := startClusterServers(t, false, xmppconntest.Options{})
	px := xmppconntest.StartProxy(t, srv.Redis.Addr) // node0's link to Redis, which the test breaks
	const ttl = 2 * time.Second
	rig := startClusterRigWith(t, clusterRigOptions{Nodes: 3, TTL: ttl, Servers: srv, LeasesOf: func(i int) string {
		if i == 0 {
			return "redis://" + px.Addr()
		}
		return ""
	}})
	rig.e.register(t, "cut", "cutdesk")
	rig.e.XMPP.Befriend(t, "cut", "cutdesk")
	desk := dialDesktop(t, rig.e.XMPP, "cutdesk")
	alice := rig.e.login(t, "cut")
	c0 := rig.Nodes[0].client(alice.SID) // PHP on node0's web server
	c0.mustCall(t, "POST", "/v1/connect", nil, nil, http.StatusOK)
	ctx := t.Context()
	cursor := ""
	poll := func(body string) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); ; {
			if time.Now().After(deadline) {
				t.Fatalf("node0 never served %q to its user", body)
			}
			p, err := c0.events(ctx, cursor, time.Second, 0)
			if err != nil {
				t.Fatalf("a poll on node0, its Redis link cut: %v", err)
			}
			if !p.Recovered && cursor != "" {
				t.Errorf("a poll on node0 said recovered:false")
			}
			cursor = p.Cursor
			for _, ev := range p.Events {
				if ev.Event == "message" && ev.Body == body {
					return
				}
			}
		}
	}
	if _, err := desk.Conn.Send(ctx, xmppconn.Message{To: alice.Bare, Type: "chat", Body: "antes do corte"}); err != nil {
		t.Fatal(err)
	}
	poll("antes do corte")
	drainDesktop(desk)

	px.Refuse()
	time.Sleep(3 * ttl) // the lease and node0's liveness key expire
	if _, err := desk.Conn.Send(ctx, xmppconn.Message{To: alice.Bare, Type: "chat", Body: "durante o corte"}); err != nil {
		t.Fatal(err)
	}
	poll("durante o corte")
	// Calls reaching the other nodes: forwarded to node0, which says it
	// holds the session.
	c1 := rig.Nodes[1].client(alice.SID)
	if _, err := c1.roster(ctx); err != nil {
		t.Fatalf("a call through node1 while node0 is cut off from Redis: %v", err)
	}
	c2 := rig.Nodes[2].client(alice.SID)
	c2.send(t, desk.Bare, "por node2", false)
	desk.waitFor(t, 15*time.Second, "the send through node2", func(ev xmppconn.Event) bool {
		m, ok := ev.(*xmppconn.Message)
		return ok && m.Body == "por node2"
	})
	others := rig.Nodes[1:]
	if n := rig.clusterMetric(t, `imsidecar_cluster_claims_total{result="takeover"}`, others...); n != 0 {
		t.Errorf("the other nodes took %v sessions over from a live owner", n)
	}
	if n := rig.clusterMetric(t, `imsidecar_cluster_peer_asks_total{result="alive"}`, others...); n < 1 {
		t.Errorf("the other nodes asked node0 %v times and heard it alive", n)
	}

	px.Restore()
	time.Sleep(2 * ttl) // node0's renewal sets its lease again
	if _, err := desk.Conn.Send(ctx, xmppconn.Message{To: alice.Bare, Type: "chat", Body: "depois do corte"}); err != nil {
		t.Fatal(err)
	}
	poll("depois do corte")
	if _, err := c1.roster(ctx); err != nil {
		t.Fatalf("a call through node1 after the link came back: %v", err)
	}
	if n := rig.clusterMetric(t, `imsidecar_cluster_claims_total{result="takeover"}`, others...); n != 0 {
		t.Errorf("the other nodes took %v sessions over", n)
	}
	if n := rig.clusterMetric(t, `imsidecar_cluster_adoptions_total{result="resumed"}`, others...); n != 0 {
		t.Errorf("the other nodes adopted %v of node0's sessions", n)
	}
	if a := rig.e.XMPP.AuthSuccesses("cut"); a != 1 {
		t.Errorf("%d logins at Prosody, want 1", a)
	}
	if flap := unavailableSeen(desk); flap != 0 {
		t.Errorf("the desktop contact saw %d unavailable presences", flap)
	}
}
