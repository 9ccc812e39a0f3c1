package xmppconn

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestPolicyViolationDropsRefused: when the server closes the stream with
// policy-violation, the stanza it refused (the largest unacknowledged one)
// leaves the resend queue with a SendFailed event; the smaller ones after
// it are re-sent, on a resumed stream as on a fresh one. A message over
// MaxSendSize is refused before anything is written, and a message that
// comes back as a policy-violation stanza error is reported too.
func TestPolicyViolationDropsRefused(t *testing.T) {
	for _, resumeOK := range []bool{true, false} {
		t.Run(fmt.Sprintf("resumed=%v", resumeOK), func(t *testing.T) {
			noLeaks(t)
			s := startScriptServer(t)
			h := make(chanHandler, 100)
			c, sc := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
			ctx := t.Context()

			_, err := c.Send(ctx, Message{To: "bob@example.test", ID: "huge", Body: strings.Repeat("'", DefaultMaxSendSize/5)})
			if !errors.Is(err, ErrSendTooLarge) {
				t.Fatalf("Send over MaxSendSize: %v, want ErrSendTooLarge", err)
			}
			big := strings.Repeat("x", 20000)
			for _, m := range []Message{{ID: "o0", Body: "a"}, {ID: "big", Body: big}, {ID: "o2", Body: "b"}} {
				m.To = "bob@example.test"
				if _, err := c.Send(ctx, m); err != nil {
					t.Fatal(err)
				}
				if got := sc.expect("message").get("id"); got != m.ID {
					t.Fatalf("server got message %q, want %q (nothing of the refused one)", got, m.ID)
				}
			}
			// roster get, presence and o0 processed; then big was too big.
			sc.write(`<a xmlns="urn:xmpp:sm:3" h="3"/>`)
			sc.write(`<stream:error><policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-streams"/><text xmlns="urn:ietf:params:xml:ns:xmpp-streams">XML stanza is too big</text></stream:error></stream:stream>`)
			sc.nc.Close()
			f := h.wait(t, func(ev Event) bool { _, ok := ev.(*SendFailed); return ok }).(*SendFailed)
			if *f != (SendFailed{Stanza: "message", To: "bob@example.test", ID: "big", Bytes: len(encodeMessage(Message{To: "bob@example.test", ID: "big", Type: "chat", Body: big})), Reason: "policy-violation"}) {
				t.Errorf("SendFailed = %+v", f)
			}

			sc2 := s.accept()
			sc2.login()
			if r := sc2.expect("resume"); r.get("h") != "1" { // the roster result
				t.Fatalf("resume h=%s", r.get("h"))
			}
			if resumeOK {
				sc2.write(`<resumed xmlns="urn:xmpp:sm:3" previd="sm1" h="3"/>`)
			} else {
				sc2.write(`<failed xmlns="urn:xmpp:sm:3" h="3"><item-not-found xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></failed>`)
				sc2.fresh("sm2")
			}
			if got := sc2.expect("message").get("id"); got != "o2" {
				t.Fatalf("after reconnecting the server got %q first, want o2 (and never big)", got)
			}
			h.wait(t, func(ev Event) bool { sc, ok := ev.(*StateChange); return ok && sc.State == StateOnline })
			if _, err := c.Send(ctx, Message{To: "bob@example.test", ID: "o3", Body: "c"}); err != nil {
				t.Fatal(err)
			}
			if got := sc2.expect("message").get("id"); got != "o3" {
				t.Fatalf("then %q, want o3", got)
			}

			sc2.write(`<message type="error" from="bob@example.test" id="o3"><error type="modify"><policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></message>`)
			f = h.wait(t, func(ev Event) bool { _, ok := ev.(*SendFailed); return ok }).(*SendFailed)
			if *f != (SendFailed{Stanza: "message", To: "bob@example.test", ID: "o3", Reason: "policy-violation"}) {
				t.Errorf("SendFailed for the stanza error = %+v", f)
			}
		})
	}
}

// TestPolicyViolationKeepsSmall: a policy-violation while only small
// stanzas are unacknowledged (not a size refusal: no server limit is that
// low) drops nothing; they are all re-sent.
func TestPolicyViolationKeepsSmall(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	h := make(chanHandler, 100)
	c, sc := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
	if _, err := c.Send(t.Context(), Message{To: "bob@example.test", ID: "o0", Body: strings.Repeat("x", minRefusable-200)}); err != nil {
		t.Fatal(err)
	}
	sc.expect("message")
	sc.write(`<a xmlns="urn:xmpp:sm:3" h="2"/><stream:error><policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error></stream:stream>`)
	sc.nc.Close()
	sc2 := s.accept()
	sc2.login()
	sc2.expect("resume")
	sc2.write(`<resumed xmlns="urn:xmpp:sm:3" previd="sm1" h="2"/>`)
	if got := sc2.expect("message").get("id"); got != "o0" {
		t.Fatalf("re-sent %q, want o0", got)
	}
	h.wait(t, func(ev Event) bool { sc, ok := ev.(*StateChange); return ok && sc.State == StateOnline })
	for len(h) > 0 {
		if f, ok := (<-h).(*SendFailed); ok {
			t.Fatalf("SendFailed %+v for a small stanza", f)
		}
	}
}

// TestPresenceTooLargeNotKept: a broadcast presence over MaxSendSize is
// refused and not kept as the one every fresh stream sends again.
func TestPresenceTooLargeNotKept(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	h := make(chanHandler, 100)
	c, _ := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
	if err := c.SendPresence(t.Context(), Presence{Show: "away", Status: "ok"}); err != nil {
		t.Fatal(err)
	}
	err := c.SendPresence(t.Context(), Presence{Show: "dnd", Status: strings.Repeat("'", DefaultMaxSendSize/5)})
	if !errors.Is(err, ErrSendTooLarge) {
		t.Fatalf("SendPresence over the limit: %v, want ErrSendTooLarge", err)
	}
	if p := c.currentPresence(); p.Show != "away" || p.Status != "ok" {
		t.Fatalf("the presence a fresh stream sends is %+v, want the last one sent", p)
	}
}

// TestResetTwiceDropsLargest: the server's policy-violation is lost in a
// TCP reset (the connection just breaks) while a large stanza is
// unacknowledged. The first break re-sends it; a second break in a row
// with the same stanza still unacknowledged drops it (SendFailed, reason
// stream_broken); the third stream gets only the small one behind it.
func TestResetTwiceDropsLargest(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	h := make(chanHandler, 100)
	c, sc := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
	for _, m := range []Message{{ID: "big", Body: strings.Repeat("x", 20000)}, {ID: "o1", Body: "a"}} {
		m.To = "bob@example.test"
		if _, err := c.Send(t.Context(), m); err != nil {
			t.Fatal(err)
		}
		sc.expect("message")
	}
	sc.nc.Close()
	for i, want := range [][]string{{"big", "o1"}, {"o1"}} {
		next := s.accept()
		next.login()
		next.expect("resume")
		next.write(`<resumed xmlns="urn:xmpp:sm:3" previd="sm1" h="2"/>`)
		var got []string
		for range want {
			got = append(got, next.expect("message").get("id"))
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("stream %d got %v, want %v", i+2, got, want)
		}
		if i == 0 {
			next.nc.Close()
		}
	}
	// Every event up to the third stream's going online, in order.
	var failed []SendFailed
	for online := 0; online < 3; {
		switch ev := h.wait(t, func(Event) bool { return true }).(type) {
		case *StateChange:
			if ev.State == StateOnline {
				online++
			}
		case *SendFailed:
			if online != 2 {
				t.Errorf("SendFailed after stream %d, want after the second", online)
			}
			failed = append(failed, *ev)
		}
	}
	if len(failed) != 1 || failed[0].ID != "big" || failed[0].Reason != "stream_broken" {
		t.Fatalf("SendFailed events %+v, want one for big, stream_broken", failed)
	}
}
