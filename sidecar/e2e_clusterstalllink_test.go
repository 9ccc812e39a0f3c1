package sidecar_test

import (
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// TestClusterRedisStallThenLinkCut: Redis stalls (SIGSTOP: connections
// accepted, nothing answered) while messages arrive, so the owner cannot
// store the stream's inbound count and acknowledges to Prosody only the
// count Redis holds; the page is served the messages all the same. Then
// the link to Prosody breaks and the stream resumes from that older
// count, so Prosody sends those messages again. The page must get each
// once, and the session must stay the one XMPP session: the old code
// handled the messages again and counted them twice, its acknowledgement
// ran ahead of what Prosody had sent, Prosody closed the session for it
// and the node logged in afresh (a second login, continuity lost), the
// 2,000-user outage row's "1 PHP session, 5 logins".
func TestClusterRedisStallThenLinkCut(t *testing.T) {
	srv := startClusterServers(t, false, xmppconntest.Options{})
	px := xmppconntest.StartProxy(t, srv.XMPP.Addr) // the node's link to Prosody, which the test cuts
	rig := startClusterRigWith(t, clusterRigOptions{Nodes: 1, TTL: 5 * time.Second, Servers: srv,
		Extra: []string{"--xmpp-addr=" + px.Addr()}})
	rig.e.register(t, "stall", "stalldesk")
	rig.e.XMPP.Befriend(t, "stall", "stalldesk")
	desk := dialDesktop(t, rig.e.XMPP, "stalldesk")
	alice := rig.e.login(t, "stall")
	c := rig.Nodes[0].client(alice.SID)
	c.mustCall(t, "POST", "/v1/connect", nil, nil, http.StatusOK)
	ctx := t.Context()

	cursor := ""
	got := map[string]int{}
	var states []string
	pollUntil := func(what string, done func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !done(); {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the page got %v", what, got)
			}
			p, err := c.events(ctx, cursor, time.Second, 0)
			if err != nil {
				continue // Redis stalled: a call may fail, the page polls again
			}
			if !p.Recovered && cursor != "" {
				t.Errorf("%s: a poll said recovered:false", what)
			}
			cursor = p.Cursor
			for _, ev := range p.Events {
				if ev.Event == "message" && ev.ID != "" {
					got[ev.ID]++
				}
				if ev.Event == "state" {
					states = append(states, ev.State+"/"+ev.Reason)
				}
			}
		}
	}
	send := func(from, n int) {
		t.Helper()
		for i := from; i < from+n; i++ {
			id := fmt.Sprintf("st-%02d", i)
			if _, err := desk.Conn.Send(ctx, xmppconn.Message{To: alice.Bare, Type: "chat", ID: id, Body: "mensagem " + id}); err != nil {
				t.Fatal(err)
			}
		}
	}
	all := func(n int) func() bool {
		return func() bool {
			for i := range n {
				if got[fmt.Sprintf("st-%02d", i)] == 0 {
					return false
				}
			}
			return true
		}
	}
	send(0, 2)
	pollUntil("before the stall", all(2))

	if err := srv.Redis.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stalled := true
	cont := func() {
		if stalled {
			stalled = false
			if err := srv.Redis.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(cont)
	send(2, 4)
	pollUntil("Redis stalled", all(6))
	px.Cut()
	time.Sleep(time.Second)
	cont()
	send(6, 3)
	pollUntil("after the cut", all(9))
	// Time for a copy sent again, and for Prosody to refuse a count
	// beyond what it sent (the node would log in afresh).
	deadline := time.Now().Add(3 * time.Second)
	pollUntil("settling", func() bool { return time.Now().After(deadline) })
	for id, n := range got {
		if n != 1 {
			t.Errorf("message %s reached the page %d times", id, n)
		}
	}
	// One login, and one authentication for the resumption.
	if n := rig.e.XMPP.AuthSuccesses("stall"); n != 2 {
		t.Errorf("%d authentications at Prosody, want 2: a login and the resumption (states %v)", n, states)
	}
	for _, st := range states {
		if st == "online/continuity_lost" {
			t.Errorf("the XMPP session was lost (states %v)", states)
		}
	}
}

// TestE2ESendRetriedSameID: a PHP page whose POST /v1/messages timed out
// (the message was sent, the answer lost) retries it with the same id
// and body. The recipient's page, on an imsidecar too, gets it once, even
// after it acknowledged the first copy: the log keeps an acknowledged
// message's dedup key two minutes. (The outage row's duplicate was not
// this: its senders retry within seconds.) The same id with another
// body is another message, delivered.
func TestE2ESendRetriedSameID(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{})
	e.register(t, "rtalice", "rtbob")
	alice, bob := e.login(t, "rtalice"), e.login(t, "rtbob")
	pa, pb := alice.connect(t), bob.connect(t)
	befriend(t, alice, bob, pa, pb)
	send := func(body string) {
		t.Helper()
		var r struct {
			ID string `json:"id"`
		}
		alice.C.mustCall(t, "POST", "/v1/messages", map[string]any{"to": bob.Bare, "body": body, "id": "rt-1"}, &r, http.StatusAccepted)
		if r.ID != "rt-1" {
			t.Fatalf("answered id %q, want rt-1", r.ID)
		}
	}
	send("primeira")
	pb.waitFor(t, 15*time.Second, "the first copy", func(ev event) bool { return ev.Event == "message" && ev.ID == "rt-1" })
	pb.poll(t, 0) // acknowledges it
	send("primeira")
	send("outra") // hostile: a reused id with another body is not swallowed
	pb.waitFor(t, 15*time.Second, "the other body", func(ev event) bool { return ev.Event == "message" && ev.Body == "outra" })
	pb.poll(t, time.Second)
	var copies int
	for _, ev := range pb.seen {
		if ev.Event == "message" && ev.ID == "rt-1" && ev.Body == "primeira" {
			copies++
		}
	}
	if copies != 1 {
		t.Errorf("the retried message reached the page %d times, want once", copies)
	}
}
