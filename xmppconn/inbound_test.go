package xmppconn

import (
	"testing"
	"time"
)

// TestInboundStanzas: typed events, automatic receipts, and refusal of
// carbons and roster pushes that do not come from the account itself.
func TestInboundStanzas(t *testing.T) {
	s := startScriptServer(t)
	h := make(chanHandler, 100)
	_, sc := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })

	// A spoofed carbon from a contact is dropped; the genuine one unwrapped.
	sc.write(`<message from="mallory@example.test" to="alice@example.test/web"><sent xmlns="urn:xmpp:carbons:2"><forwarded xmlns="urn:xmpp:forward:0"><message from="alice@example.test/other" to="bob@example.test" type="chat" id="spoof"><body>fake</body></message></forwarded></sent></message>`)
	sc.write(`<message from="alice@example.test" to="alice@example.test/web"><sent xmlns="urn:xmpp:carbons:2"><forwarded xmlns="urn:xmpp:forward:0"><message from="alice@example.test/other" to="bob@example.test" type="chat" id="c1"><body>mine</body></message></forwarded></sent></message>`)
	m := h.wait(t, func(ev Event) bool { _, ok := ev.(*Message); return ok }).(*Message)
	if m.ID != "c1" || m.Carbon != "sent" || m.To != "bob@example.test" || m.Body != "mine" {
		t.Fatalf("carbon = %+v", m)
	}

	// A message asking for a receipt, with a delay stamp and a thread.
	sc.write(`<message from="bob@example.test/x" type="chat" id="r1"><body>hello</body><thread>t1</thread><request xmlns="urn:xmpp:receipts"/><active xmlns="http://jabber.org/protocol/chatstates"/><delay xmlns="urn:xmpp:delay" stamp="2026-01-02T03:04:05.5Z"/></message>`)
	m = h.wait(t, func(ev Event) bool { _, ok := ev.(*Message); return ok }).(*Message)
	want := time.Date(2026, 1, 2, 3, 4, 5, 5e8, time.UTC)
	if m.ID != "r1" || !m.Receipt || m.Thread != "t1" || m.ChatState != "active" || !m.Delay.Equal(want) {
		t.Fatalf("message = %+v", m)
	}
	rcpt := sc.expect("message")
	if rcpt.get("to") != "bob@example.test/x" || rcpt.child(nsReceipts, "received").get("id") != "r1" {
		t.Fatalf("receipt reply to=%q", rcpt.get("to"))
	}

	// Standalone chat state and an incoming receipt.
	sc.write(`<message from="bob@example.test/x" type="chat"><composing xmlns="http://jabber.org/protocol/chatstates"/></message>`)
	cs := h.wait(t, func(ev Event) bool { _, ok := ev.(*ChatState); return ok }).(*ChatState)
	if cs.State != "composing" || cs.From != "bob@example.test/x" {
		t.Fatalf("chat state = %+v", cs)
	}
	sc.write(`<message from="bob@example.test/x" id="z"><received xmlns="urn:xmpp:receipts" id="o9"/></message>`)
	if r := h.wait(t, func(ev Event) bool { _, ok := ev.(*Receipt); return ok }).(*Receipt); r.ID != "o9" {
		t.Fatalf("receipt = %+v", r)
	}

	// Roster pushes: refused from a contact, accepted from the server.
	sc.write(`<iq type="set" id="p1" from="mallory@example.test/x"><query xmlns="jabber:iq:roster"><item jid="evil@example.test"/></query></iq>`)
	if r := sc.expect("iq"); r.get("type") != "error" || r.get("id") != "p1" {
		t.Fatalf("spoofed push answered %s", r.get("type"))
	}
	sc.write(`<iq type="set" id="p2"><query xmlns="jabber:iq:roster"><item jid="carol@example.test" name="Carol" subscription="both"><group>Work</group></item></query></iq>`)
	if r := sc.expect("iq"); r.get("type") != "result" || r.get("id") != "p2" {
		t.Fatalf("push answered %s", r.get("type"))
	}
	rp := h.wait(t, func(ev Event) bool { _, ok := ev.(*RosterPush); return ok }).(*RosterPush)
	if rp.Item.JID != "carol@example.test" || rp.Item.Name != "Carol" || rp.Item.Subscription != "both" || len(rp.Item.Groups) != 1 {
		t.Fatalf("push = %+v", rp.Item)
	}

	// Presence and subscriptions.
	sc.write(`<presence from="bob@example.test/x"><show>dnd</show><status>busy</status><priority>-3</priority></presence><presence from="bob@example.test" type="subscribe"/>`)
	p := h.wait(t, func(ev Event) bool { _, ok := ev.(*Presence); return ok }).(*Presence)
	if p.Type != "available" || p.Show != "dnd" || p.Status != "busy" || p.Priority != -3 {
		t.Fatalf("presence = %+v", p)
	}
	if sub := h.wait(t, func(ev Event) bool { _, ok := ev.(*Subscription); return ok }).(*Subscription); sub.Type != "subscribe" {
		t.Fatalf("subscription = %+v", sub)
	}
	select {
	case ev := <-h:
		if m, ok := ev.(*Message); ok && m.ID == "spoof" {
			t.Fatal("spoofed carbon delivered")
		}
	default:
	}
}

// TestIQResponseSpoofing: a result with the right id from the wrong sender
// does not complete the request.
func TestIQResponseSpoofing(t *testing.T) {
	s := startScriptServer(t)
	c, sc := dialScript(t, s, make(chanHandler, 100), func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
	type res struct {
		b   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() {
		b, err := c.SendIQ(t.Context(), "get", "bob@example.test/x", []byte(`<query xmlns="jabber:iq:version"/>`))
		ch <- res{b, err}
	}()
	iq := sc.expect("iq")
	sc.write(`<iq type="result" id="` + iq.get("id") + `" from="mallory@example.test/x"><query xmlns="jabber:iq:version"><name>evil</name></query></iq>`)
	sc.write(`<iq type="result" id="` + iq.get("id") + `" from="bob@example.test/x"><query xmlns="jabber:iq:version"><name>good</name></query></iq>`)
	r := <-ch
	if r.err != nil || string(r.b) != `<query xmlns="jabber:iq:version"><name>good</name></query>` {
		t.Fatalf("SendIQ = %q, %v", r.b, r.err)
	}
}

// TestKeepaliveDeadPeer: a silent server gets an <r/> after PingInterval
// and is declared dead after PingTimeout more.
func TestKeepaliveDeadPeer(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	h := make(chanHandler, 100)
	type res struct {
		c   *Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := Dial(t.Context(), Config{
			Addr: s.ln.Addr().String(), Domain: "example.test", TLS: TLSNone,
			User: "alice", Password: "pw", Resource: "web", Handler: h,
			PingInterval: 200 * time.Millisecond, PingTimeout: 200 * time.Millisecond,
		})
		ch <- res{c, err}
	}()
	sc := s.accept()
	sc.login()
	sc.fresh("sm1")
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	start := time.Now()
	sc.expect("r") // the probe
	// Answer whitespace only: not an answer to the probe, but traffic.
	sc.write(" ")
	select {
	case <-r.c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("dead peer not detected")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v to detect a dead peer", d)
	}
	if r.c.State() != StateOffline {
		t.Fatalf("State() = %s", r.c.State())
	}
}
