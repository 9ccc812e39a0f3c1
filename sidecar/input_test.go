package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// inputField is one XMPP value the API takes from a JSON body: the call
// that carries it, and xmppconn's rule for it.
type inputField struct {
	name  string // the field as xmppconn's errors name it
	path  string
	body  func(v string) string // the JSON body with the value in place
	parse func(v string) error  // xmppconn's rule
}

func jsonString(v string) string { return fmt.Sprintf("%q", v) }

var inputFields = []inputField{
	{"message type", "/v1/messages",
		func(v string) string {
			return `{"to":"sala@conference.example.test","body":"oi","type":` + jsonString(v) + `}`
		},
		func(v string) error { _, err := xmppconn.ParseMessageType(v); return err }},
	{"presence show", "/v1/presence",
		func(v string) string { return `{"show":` + jsonString(v) + `}` },
		func(v string) error { _, err := xmppconn.ParseShow(v); return err }},
	{"presence show", "/v1/connect",
		func(v string) string { return `{"show":` + jsonString(v) + `}` },
		func(v string) error { _, err := xmppconn.ParseShow(v); return err }},
	{"chat state", "/v1/chatstates",
		func(v string) string { return `{"to":"bob@example.test","state":` + jsonString(v) + `}` },
		func(v string) error { _, err := xmppconn.ParseChatState(v); return err }},
	{"subscription action", "/v1/subscriptions/bob@example.test",
		func(v string) string { return `{"action":` + jsonString(v) + `}` },
		func(v string) error { _, err := xmppconn.ParseSubscriptionAction(v); return err }},
}

// inputCandidates are the values every field is fed: each field's valid
// ones, the other fields' (valid elsewhere, invalid here), near misses and
// junk.
var inputCandidates = []string{
	"", "chat", "groupchat", "normal", "headline", "error",
	"away", "dnd", "xa", "available", "unavailable", "online",
	"active", "composing", "paused", "inactive", "gone", "typing",
	"subscribe", "approve", "deny", "cancel", "subscribed", "unsubscribe", "unsubscribed", "remove",
	"Chat", "CHAT", " chat", "chat ", "away\n", "Composing", "Approve", "composing\x00", "dnd,xa",
	"spam", "sleepy", "spy", "<away/>", "ação", "🙂", strings.Repeat("chat", 300),
}

// TestInvalidXMPPValuesAre400 feeds every candidate value to every XMPP
// field of the API: exactly the values xmppconn accepts get through
// (the API and the Conn cannot disagree), every other is 400 bad_request,
// never a 500, and reaches no stream.
func TestInvalidXMPPValuesAre400(t *testing.T) {
	for _, f := range inputFields {
		t.Run(f.name+" "+f.path, func(t *testing.T) {
			h := newHarness(t, "")
			sid := []string{"X-Session-Id", goodID}
			if rec := h.do("POST", "/v1/connect", "", sid...); rec.Code != 200 {
				t.Fatalf("connect: %d %s", rec.Code, rec.Body)
			}
			bad := 0
			for _, v := range inputCandidates {
				before := len(h.conn.sent) + len(h.conn.pres) + len(h.conn.subs) + len(h.conn.states)
				rec := h.do("POST", f.path, f.body(v), sid...)
				after := len(h.conn.sent) + len(h.conn.pres) + len(h.conn.subs) + len(h.conn.states)
				err := f.parse(v)
				if err == nil {
					if rec.Code/100 != 2 {
						t.Errorf("%s %q, which xmppconn accepts: %d %s", f.name, v, rec.Code, rec.Body)
					}
				} else {
					bad++
					if !errors.Is(err, xmppconn.ErrInvalidArgument) || !strings.Contains(err.Error(), f.name) {
						t.Errorf("xmppconn's error for %s %q does not name the field or wrap ErrInvalidArgument: %v", f.name, v, err)
					}
					if rec.Code != http.StatusBadRequest || h.code(rec) != "bad_request" {
						t.Errorf("%s %q = %d %s, want 400 bad_request", f.name, v, rec.Code, rec.Body)
					}
					if after != before {
						t.Errorf("%s %q reached the stream", f.name, v)
					}
				}
			}
			if bad < len(inputCandidates)-6 {
				t.Fatalf("only %d of %d candidates were invalid %ss: the list lost its point", bad, len(inputCandidates), f.name)
			}
			// A value that is not a JSON string at all.
			if rec := h.do("POST", f.path, strings.Replace(f.body("x"), `"x"`, `5`, 1), sid...); rec.Code != 400 || h.code(rec) != "bad_request" {
				t.Errorf("%s as a number = %d %s", f.name, rec.Code, rec.Body)
			}
		})
	}
	t.Run("priority", func(t *testing.T) {
		h := newHarness(t, "")
		sid := []string{"X-Session-Id", goodID}
		for _, p := range []int{-129, 128, 1 << 20, -1 << 40} {
			rec := h.do("POST", "/v1/connect", fmt.Sprintf(`{"priority":%d}`, p), sid...)
			if rec.Code != 400 || h.code(rec) != "bad_request" || h.dials != 0 {
				t.Errorf("priority %d = %d %s (dials %d)", p, rec.Code, rec.Body, h.dials)
			}
		}
		for _, p := range []int{xmppconn.MinPriority, 0, xmppconn.MaxPriority} {
			if rec := h.do("POST", "/v1/presence", fmt.Sprintf(`{"priority":%d}`, p), sid...); rec.Code == 400 {
				t.Errorf("priority %d refused: %s", p, rec.Body)
			}
		}
	})
	t.Run("groupchat to a full JID", func(t *testing.T) {
		h := newHarness(t, "")
		sid := []string{"X-Session-Id", goodID}
		h.do("POST", "/v1/connect", "", sid...)
		rec := h.do("POST", "/v1/messages", `{"to":"sala@conference.example.test/Bob","body":"oi","type":"groupchat"}`, sid...)
		if rec.Code != 400 || h.code(rec) != "bad_request" || len(h.conn.sent) != 0 {
			t.Fatalf("= %d %s, sent %v", rec.Code, rec.Body, h.conn.sent)
		}
	})
}

// TestXMPPRejectionIsNever500: whatever the sidecar lets through, a value
// a real xmppconn.Conn refuses is answered 400 bad_request, not 500, and
// costs the stream nothing. Each of the Conn's checks is driven against a
// live stream on Prosody, its error mapped by statusFor, and the same
// error returned through the HTTP API.
func TestXMPPRejectionIsNever500(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Prosody")
	}
	srv := xmppconntest.StartProsody(t, xmppconntest.Options{})
	srv.Register(t, "alice", "alice-pw")
	ctx := t.Context()
	got := make(chan *xmppconn.Message, 16)
	conn, err := xmppconn.Dial(ctx, xmppconn.Config{
		Addr: srv.Addr, Domain: srv.Domain, TLSConfig: srv.TLSConfig(), User: "alice", Password: "alice-pw", Resource: "desktop",
		Handler: xmppconn.HandlerFunc(func(ev xmppconn.Event) {
			if m, ok := ev.(*xmppconn.Message); ok {
				got <- m
			}
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	bob := srv.JID("bob")
	var errs []error
	for _, v := range inputCandidates {
		if _, err := xmppconn.ParseMessageType(v); err != nil {
			_, err := conn.Send(ctx, xmppconn.Message{To: bob, Body: "x", Type: xmppconn.MessageType(v)})
			errs = append(errs, err)
		}
		if _, err := xmppconn.ParseChatState(v); err != nil && v != "" { // "" is a message without one
			_, err := conn.Send(ctx, xmppconn.Message{To: bob, Body: "x", ChatState: xmppconn.ChatStateKind(v)})
			errs = append(errs, err)
		}
		if _, err := xmppconn.ParseShow(v); err != nil {
			errs = append(errs, conn.SendPresence(ctx, xmppconn.Presence{Show: xmppconn.Show(v)}))
		}
		if _, err := xmppconn.ParseChatState(v); err != nil {
			errs = append(errs, conn.SendChatState(ctx, bob, xmppconn.ChatStateKind(v)))
		}
		if _, err := xmppconn.ParseSubscriptionAction(v); err != nil {
			errs = append(errs, conn.Subscribe(ctx, bob, xmppconn.SubscriptionAction(v)))
		}
	}
	hash := "not-a-sha1"
	errs = append(errs,
		conn.SendPresence(ctx, xmppconn.Presence{Priority: 128}),
		conn.SendPresence(ctx, xmppconn.Presence{Type: "subscribe"}),
		conn.SendPresence(ctx, xmppconn.Presence{Avatar: &hash}),
		conn.SetAvatarHash(ctx, hash),
	)
	_, err = conn.Send(ctx, xmppconn.Message{To: "sala@conference." + srv.Domain + "/Bob", Body: "x", Type: xmppconn.GroupChatMessage})
	errs = append(errs, err)
	_, err = conn.History(ctx, xmppconn.HistoryQuery{Max: xmppconn.MaxHistoryMax + 1})
	errs = append(errs, err)

	h := newHarness(t, "")
	h.reg.cfg.RateLimit = 1e6 // one call per rejection
	sid := []string{"X-Session-Id", goodID}
	if rec := h.do("POST", "/v1/connect", "", sid...); rec.Code != 200 {
		t.Fatalf("connect: %d %s", rec.Code, rec.Body)
	}
	for i, err := range errs {
		if !errors.Is(err, xmppconn.ErrInvalidArgument) {
			t.Fatalf("rejection %d is not an ErrInvalidArgument: %v", i, err)
		}
		if status, code := statusFor(err); status != http.StatusBadRequest || code != "bad_request" {
			t.Errorf("statusFor(%v) = %d %s", err, status, code)
		}
		h.conn.fail = err // as if the sidecar had let the value through
		if rec := h.do("POST", "/v1/messages", `{"to":"bob@example.test","body":"hi"}`, sid...); rec.Code != 400 || h.code(rec) != "bad_request" {
			t.Errorf("the API answered %v with %d %s", err, rec.Code, rec.Body)
		}
	}
	t.Logf("%d rejections driven", len(errs))
	if len(errs) < 5*len(inputCandidates)/2 {
		t.Fatalf("only %d rejections driven", len(errs))
	}
	// Nothing was sent for any of them: the stream is up and a valid
	// message still goes through.
	if st := conn.State(); st != xmppconn.StateOnline {
		t.Fatalf("stream %s after the rejections", st)
	}
	if _, err := conn.Send(ctx, xmppconn.Message{To: conn.JID(), Body: "still here"}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Body != "still here" {
			t.Fatalf("received %+v", m)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the valid message did not arrive")
	}
}
