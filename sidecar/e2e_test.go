package sidecar_test

// End-to-end tests: real Prosody, real redis-server, real PHP writing
// Expresso-shaped sessions, and the imsidecar binary as a subprocess driven
// through its HTTP API. Helpers are in e2e_helpers_test.go.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// TestE2EChat: two web users connect, see each other's presence, chat both
// ways with receipts and chat states; with the files store and with Redis.
func TestE2EChat(t *testing.T) {
	for _, store := range []string{"files", "redis"} {
		t.Run(store, func(t *testing.T) {
			e := startE2E(t, store, daemonOptions{Token: true})
			e.register(t, "alice", "bob")
			alice, bob := e.login(t, "alice"), e.login(t, "bob")
			pa, pb := alice.connect(t), bob.connect(t)

			var me meResp
			alice.C.mustCall(t, "GET", "/v1/me", nil, &me, http.StatusOK)
			if me.User != "alice" || me.State != "online" || !strings.HasPrefix(me.JID, alice.Bare+"/") {
				t.Errorf("me = %+v", me)
			}
			if me.FullName != "Alice da Conceição" {
				t.Errorf("fullname %q: the ISO-8859-1 session string was not converted to UTF-8", me.FullName)
			}

			befriend(t, alice, bob, pa, pb)

			// Presence: each sees the other available, then alice goes away.
			pa.seenOrWait(t, 15*time.Second, "bob available", func(ev event) bool {
				return ev.Event == "presence" && bareJID(ev.From) == bob.Bare && ev.Type == "available"
			})
			pb.seenOrWait(t, 15*time.Second, "alice available", func(ev event) bool {
				return ev.Event == "presence" && bareJID(ev.From) == alice.Bare && ev.Type == "available"
			})
			alice.C.mustCall(t, "POST", "/v1/presence", map[string]any{"show": "away", "status": "Em reunião", "priority": 3}, nil, http.StatusNoContent)
			ev := pb.waitFor(t, 15*time.Second, "alice away", func(ev event) bool {
				return ev.Event == "presence" && bareJID(ev.From) == alice.Bare && ev.Show == "away"
			})
			if ev.Status != "Em reunião" || ev.Priority != 3 || ev.Type != "available" {
				t.Errorf("bob saw alice's presence as %+v", ev)
			}
			if it := bob.C.rosterItem(t.Context(), alice.Bare); len(it.Presence) == 0 || it.Presence[0].Show != "away" {
				t.Errorf("bob's roster shows alice as %+v", it)
			}

			// Chat states.
			for _, st := range []string{"composing", "paused"} {
				alice.C.mustCall(t, "POST", "/v1/chatstates", map[string]string{"to": bob.Bare, "state": st}, nil, http.StatusNoContent)
				pb.waitFor(t, 10*time.Second, "chat state "+st, func(ev event) bool {
					return ev.Event == "chatstate" && bareJID(ev.From) == alice.Bare && ev.State == st
				})
			}

			// Messages both ways with receipts.
			for i, dir := range []struct {
				from, to *user
				pf, pt   *poller
			}{{alice, bob, pa, pb}, {bob, alice, pb, pa}} {
				body := fmt.Sprintf("mensagem %d de %s: olá ✓ <&>", i, dir.from.Name)
				id := dir.from.C.send(t, dir.to.Bare, body, true)
				got := dir.pt.waitFor(t, 15*time.Second, "message "+id, func(ev event) bool {
					return ev.Event == "message" && ev.ID == id
				})
				if got.Body != body || bareJID(got.From) != dir.from.Bare || got.Type != "chat" {
					t.Errorf("%s received %+v", dir.to.Name, got)
				}
				dir.pf.waitFor(t, 15*time.Second, "receipt "+id, func(ev event) bool {
					return ev.Event == "receipt" && ev.ID == id && bareJID(ev.From) == dir.to.Bare
				})
			}
		})
	}
}

// TestE2EDesktopClient: a desktop-style XMPP client chats with a web user.
func TestE2EDesktopClient(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{})
	e.register(t, "alice", "carol")
	alice := e.login(t, "alice")
	pa := alice.connect(t)
	carol := dialDesktop(t, e.XMPP, "carol")
	befriendDesktop(t, alice, pa, carol)

	// Web → desktop, with a receipt from the desktop client.
	id := alice.C.send(t, carol.Bare, "oi Carol, tudo bem?", true)
	ev := carol.waitFor(t, 15*time.Second, "message from alice", func(ev xmppconn.Event) bool {
		m, ok := ev.(*xmppconn.Message)
		return ok && m.ID == id
	})
	if m := ev.(*xmppconn.Message); m.Body != "oi Carol, tudo bem?" || bareJID(m.From) != alice.Bare || !m.Receipt {
		t.Errorf("desktop received %+v", m)
	}
	pa.waitFor(t, 15*time.Second, "receipt from desktop", func(ev event) bool {
		return ev.Event == "receipt" && ev.ID == id
	})

	// Desktop → web, with a chat state first.
	if err := carol.Conn.SendChatState(t.Context(), alice.Bare, "composing"); err != nil {
		t.Fatal(err)
	}
	pa.waitFor(t, 15*time.Second, "composing from desktop", func(ev event) bool {
		return ev.Event == "chatstate" && bareJID(ev.From) == carol.Bare && ev.State == "composing"
	})
	did, err := carol.Conn.Send(t.Context(), xmppconn.Message{To: alice.Bare, Type: "chat", Body: "tudo ótimo 👍", Receipt: true})
	if err != nil {
		t.Fatal(err)
	}
	got := pa.waitFor(t, 15*time.Second, "message from desktop", func(ev event) bool {
		return ev.Event == "message" && bareJID(ev.From) == carol.Bare && ev.Body != ""
	})
	if got.Body != "tudo ótimo 👍" || got.ID != did || got.From != carol.Conn.JID() {
		t.Errorf("web received %+v (desktop JID %s, id %s)", got, carol.Conn.JID(), did)
	}
	carol.waitFor(t, 15*time.Second, "receipt from web", func(ev xmppconn.Event) bool {
		r, ok := ev.(*xmppconn.Receipt)
		return ok && r.ID == did
	})
}

// TestE2ELogoutTakesUserOffline: PHP session_destroy() takes the user
// offline within 30 s; the contact sees unavailable, and the API refuses the
// destroyed session.
func TestE2ELogoutTakesUserOffline(t *testing.T) {
	for _, store := range []string{"files", "redis"} {
		t.Run(store, func(t *testing.T) {
			e := startE2E(t, store, daemonOptions{RecheckInterval: 2 * time.Second})
			e.register(t, "alice", "bob")
			alice, bob := e.login(t, "alice"), e.login(t, "bob")
			pa, pb := alice.connect(t), bob.connect(t)
			befriend(t, alice, bob, pa, pb)
			pb.seenOrWait(t, 15*time.Second, "alice available", func(ev event) bool {
				return ev.Event == "presence" && bareJID(ev.From) == alice.Bare && ev.Type == "available"
			})

			start := time.Now()
			e.logout(t, alice)
			ev := pb.waitFor(t, 30*time.Second, "alice unavailable after logout", func(ev event) bool {
				return ev.Event == "presence" && bareJID(ev.From) == alice.Bare && ev.Type == "unavailable"
			})
			took := time.Since(start)
			t.Logf("%s store: logout → contact sees unavailable in %v (recheck interval 2s)", store, took.Round(time.Millisecond))
			if strings.HasPrefix(ev.Status, "Disconnected") {
				t.Errorf("alice's stream was dropped, not closed with unavailable presence: status %q", ev.Status)
			}
			st, err := alice.C.call(t.Context(), "GET", "/v1/me", nil, nil)
			if st != http.StatusUnauthorized || errCode(err) != "session_not_found" {
				t.Errorf("GET /v1/me after logout: %d %v, want 401 session_not_found", st, err)
			}
		})
	}
}

// TestE2EPollCutMidResponse: a poll whose connection dies halfway through
// the body acknowledges nothing; retried with the old cursor it returns the
// same events.
func TestE2EPollCutMidResponse(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{Token: true})
	e.register(t, "alice", "bob")
	alice, bob := e.login(t, "alice"), e.login(t, "bob")
	pa, pb := alice.connect(t), bob.connect(t)
	befriend(t, alice, bob, pa, pb)
	// Drain bob's log, then make sure a known batch is waiting.
	for len(pb.poll(t, time.Second)) > 0 {
	}
	old := pb.cursor
	const n = 20
	ids := make(map[string]bool, n)
	for i := range n {
		ids[alice.C.send(t, bob.Bare, fmt.Sprintf("lote %02d %s", i, strings.Repeat("texto ", 40)), false)] = true
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		page, err := bob.C.events(t.Context(), old, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if countMessages(page.Events, ids) == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d messages queued after 15s", countMessages(page.Events, ids), n)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A raw HTTP request, cut off after part of the body.
	u, _ := url.Parse(e.D.URL)
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /v1/events?cursor=%s&wait=0&limit=100 HTTP/1.1\r\nHost: %s\r\nX-Session-Id: %s\r\nAuthorization: Bearer %s\r\n\r\n",
		url.QueryEscape(old), u.Host, bob.SID, e.D.Token)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("raw poll: HTTP %d", resp.StatusCode)
	}
	part := make([]byte, 512)
	if _, err := io.ReadFull(resp.Body, part); err != nil {
		t.Fatalf("reading the first 512 bytes of the body: %v", err)
	}
	conn.Close() // the PHP request died here
	if !strings.Contains(string(part), `"events"`) {
		t.Errorf("partial body does not look like an events page: %q", part[:80])
	}

	// Retried with the old cursor: all the events again, in the same order.
	page, err := bob.C.events(t.Context(), old, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !page.Recovered {
		t.Errorf("retry with the old cursor: recovered=false")
	}
	if got := countMessages(page.Events, ids); got != n {
		t.Errorf("retry with the old cursor returned %d of the %d messages", got, n)
	}
	// And acknowledging the new cursor moves past them.
	next, err := bob.C.events(t.Context(), page.Cursor, time.Second, 100)
	if err != nil {
		t.Fatal(err)
	}
	if got := countMessages(next.Events, ids); got != 0 {
		t.Errorf("after acknowledging, %d of the messages came back", got)
	}
}

func countMessages(evs []event, ids map[string]bool) int {
	n := 0
	for _, ev := range evs {
		if ev.Event == "message" && ids[ev.ID] {
			n++
		}
	}
	return n
}

// TestE2EProsodyRestart: a Prosody restart in the middle of a conversation
// loses no message sent through the API, in either direction.
func TestE2EProsodyRestart(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{})
	e.register(t, "alice", "bob")
	alice, bob := e.login(t, "alice"), e.login(t, "bob")
	pa, pb := alice.connect(t), bob.connect(t)
	befriend(t, alice, bob, pa, pb)

	const perSide = 30
	sent := map[string]string{} // body → recipient
	var mu sync.Mutex
	send := func(from, to *user, i int) {
		body := fmt.Sprintf("%s→%s #%02d", from.Name, to.Name, i)
		var r struct {
			ID string `json:"id"`
		}
		st, err := from.C.call(t.Context(), "POST", "/v1/messages", map[string]any{"to": to.Bare, "body": body, "type": "chat"}, &r)
		mu.Lock()
		defer mu.Unlock()
		if st == http.StatusAccepted {
			sent[body] = to.Name
			return
		}
		// Refused while the stream is down is allowed (the caller knows);
		// accepted-then-lost is not.
		t.Logf("send %q refused: %d %v", body, st, err)
	}
	for i := range perSide {
		if i == perSide/3 {
			start := time.Now()
			e.XMPP.Restart(t)
			t.Logf("prosody restarted in %v", time.Since(start).Round(time.Millisecond))
		}
		send(alice, bob, i)
		send(bob, alice, i)
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	want := len(sent)
	mu.Unlock()
	if want < perSide { // most sends must have been accepted
		t.Errorf("only %d of %d sends were accepted around the restart", want, 2*perSide)
	}

	got := map[string]int{}
	var states []string
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range []*poller{pa, pb} {
			for _, ev := range p.poll(t, time.Second) {
				switch ev.Event {
				case "message":
					if sent[ev.Body] == p.name {
						got[ev.Body]++
					}
				case "state":
					states = append(states, p.name+":"+ev.State)
				}
			}
		}
		if len(got) == want {
			break
		}
	}
	t.Logf("sent %d accepted messages, received %d distinct; state events %v", want, len(got), states)
	dups := 0
	for body, to := range sent {
		switch got[body] {
		case 0:
			t.Errorf("lost: %q (to %s)", body, to)
		case 1:
		default:
			dups++
		}
	}
	if dups > 0 {
		t.Logf("%d messages were delivered more than once (allowed, at-least-once)", dups)
	}
}

// TestE2ESIGTERM: SIGTERM closes every stream cleanly (contacts see
// unavailable presence sent by the client, not a dropped connection) and the
// process exits 0 within the shutdown timeout.
func TestE2ESIGTERM(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{ShutdownTimeout: 10 * time.Second})
	e.register(t, "alice", "bob", "carol")
	alice, bob := e.login(t, "alice"), e.login(t, "bob")
	pa, pb := alice.connect(t), bob.connect(t)
	carol := dialDesktop(t, e.XMPP, "carol")
	befriendDesktop(t, alice, pa, carol)
	befriendDesktop(t, bob, pb, carol)
	for _, u := range []*user{alice, bob} {
		u.C.mustCall(t, "POST", "/v1/presence", map[string]any{"show": "", "status": "sigterm-test", "priority": 0}, nil, http.StatusNoContent)
	}
	online := map[string]string{}
	deadline := time.Now().Add(15 * time.Second)
	for len(online) < 2 && time.Now().Before(deadline) {
		select {
		case ev := <-carol.events:
			if p, ok := ev.(*xmppconn.Presence); ok && p.Type == "available" && p.Status == "sigterm-test" {
				online[bareJID(p.From)] = p.From
			}
		case <-time.After(time.Second):
		}
	}
	if len(online) < 2 {
		t.Fatalf("carol sees only %v online", online)
	}

	code, took := e.D.Signal(t, syscall.SIGTERM, 10*time.Second+5*time.Second)
	t.Logf("imsidecar exited with %d, %v after SIGTERM", code, took.Round(time.Millisecond))
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0\n%s", code, e.D.LogTail(30))
	}
	carol.waitClosed(t, 2)
}

// TestE2EWrongPassword: a session whose password Prosody refuses gives 502
// xmpp_auth_failed, and ten connects cost exactly one authentication attempt.
func TestE2EWrongPassword(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{})
	e.register(t, "dave")
	dave := e.login(t, "dave", "not-daves-password")
	for i := range 10 {
		st, err := dave.C.call(t.Context(), "POST", "/v1/connect", nil, nil)
		if st != http.StatusBadGateway || errCode(err) != "xmpp_auth_failed" {
			t.Fatalf("connect #%d: %d %v, want 502 xmpp_auth_failed", i+1, st, err)
		}
	}
	if n := e.XMPP.AuthFailures("dave"); n != 1 {
		t.Errorf("prosody saw %d authentication failures for dave, want exactly 1", n)
	}
	// A new login (a new PHP session) with the right password works.
	dave2 := e.login(t, "dave")
	dave2.connect(t)
}

// TestPHPClient runs the PHP client's PHPUnit suite (examples/php) against
// the live daemon: files store over TCP, and Redis store over a unix socket.
func TestPHPClient(t *testing.T) {
	phpunit := requireBinary(t, "phpunit", "phpunit php-curl")
	dir, err := filepath.Abs(filepath.Join("..", "examples", "php"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		store string
		unix  bool
	}{{"files", false}, {"redis", true}} {
		t.Run(tc.store, func(t *testing.T) {
			e := startE2E(t, tc.store, daemonOptions{Token: true, UnixSocket: tc.unix, Prosody: xmppconntest.Options{MUC: true}})
			e.register(t, "phpalice", "phpbob", "phpcarol")
			a, b, c := e.login(t, "phpalice"), e.login(t, "phpbob"), e.login(t, "phpcarol")
			cmd := exec.CommandContext(t.Context(), phpunit, "--configuration", filepath.Join(dir, "phpunit.xml.dist"), "--testdox")
			cmd.Dir = dir
			cmd.Env = append(os.Environ(),
				"IMSIDECAR_URL="+e.D.URL,
				"IMSIDECAR_TOKEN_FILE="+e.D.TokenFile,
				"IMSIDECAR_TEST_DOMAIN="+e.XMPP.Domain,
				"IMSIDECAR_TEST_USER_ALICE="+a.Name,
				"IMSIDECAR_TEST_USER_BOB="+b.Name,
				"IMSIDECAR_TEST_SID_ALICE="+a.SID,
				"IMSIDECAR_TEST_SID_BOB="+b.SID,
				"IMSIDECAR_TEST_SID_CAROL="+c.SID,
			)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			t.Logf("phpunit against %s (%v):\n%s", e.D.URL, time.Since(start).Round(time.Millisecond), out)
			if err != nil {
				t.Fatalf("phpunit failed: %v", err)
			}
		})
	}
}
