package sidecar_test

// Browser streams against the real daemon and Prosody: BOSH (cookie SASL
// and prebind) and WebSocket clients attached to the user's persistent
// stream, chatting with a /v1 user and a desktop client; page reloads
// without presence flaps or lost messages; two tabs; IQ isolation; stanza
// injection; a sid of another PHP session, a logged-out cookie and a
// foreign Origin refused; logout ending every tab.

import (
	"context"
	"encoding/base64"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"expressolivre.org/imsidecar/sidecar"
	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// browserRig is alice (a browser), bob (a /v1 user) and carol (a desktop
// client), all mutual contacts.
type browserRig struct {
	e          *e2e
	alice, bob *user
	pa, pb     *poller
	carol      *desktop
}

func startBrowserRig(t *testing.T, opts daemonOptions) *browserRig {
	t.Helper()
	e := startE2E(t, "files", opts)
	e.register(t, "alice", "bob", "carol")
	r := &browserRig{e: e, alice: e.login(t, "alice"), bob: e.login(t, "bob")}
	r.pa, r.pb = r.alice.connect(t), r.bob.connect(t)
	befriend(t, r.alice, r.bob, r.pa, r.pb)
	r.carol = dialDesktop(t, e.XMPP, "carol")
	befriendDesktop(t, r.alice, r.pa, r.carol)
	// What carol saw of alice so far came with the subscriptions.
	r.alice.C.send(t, r.carol.Bare, "pronto", false)
	r.carol.waitFor(t, 15*time.Second, "alice's first message", func(ev xmppconn.Event) bool {
		m, ok := ev.(*xmppconn.Message)
		return ok && m.Body == "pronto"
	})
	return r
}

// page opens a BOSH stream with alice's session cookie, as a page of the
// site would, and logs in with a placeholder password.
func (r *browserRig) page(t *testing.T) (*sidecar.BOSHClient, string) {
	t.Helper()
	c := sidecar.NewBOSHClient(t, r.e.D.URL+"/http-bind", "Cookie", "sessionid="+r.alice.SID, "Origin", r.e.D.URL)
	c.Create(r.e.XMPP.Domain)
	r.e.secrets = append(r.e.secrets, c.SID) // a BOSH sid is never logged either
	jid := c.Login("alice", "placeholder")
	return c, jid
}

// noPresenceFrom reads carol's events until a message with body arrives
// and fails on any presence from alice before it: a presence alice's
// server sent would reach carol before alice's later message.
func (r *browserRig) noPresenceFrom(t *testing.T, body string) {
	t.Helper()
	r.carol.waitFor(t, 15*time.Second, "message "+body, func(ev xmppconn.Event) bool {
		switch e := ev.(type) {
		case *xmppconn.Presence:
			if bareJID(e.From) == r.alice.Bare {
				t.Errorf("carol saw alice's presence flap: %+v", e)
			}
		case *xmppconn.Message:
			return e.Body == body
		}
		return false
	})
}

func TestE2EBOSHChatAndReload(t *testing.T) {
	r := startBrowserRig(t, daemonOptions{})
	ctx := t.Context()
	page, jid := r.page(t)
	if !strings.HasPrefix(jid, r.alice.Bare+"/") {
		t.Fatalf("bound %q", jid)
	}
	// The initial presence replays the contacts' presences.
	page.Send("", `<presence xmlns="jabber:client"/>`)
	page.WaitFor(10*time.Second, "carol's presence", func(s string) bool { return strings.Contains(s, `from="`+r.carol.Bare+`/desktop"`) })
	// The roster through the stream.
	page.Send("", `<iq xmlns="jabber:client" type="get" id="r1"><query xmlns="jabber:iq:roster"/></iq>`)
	page.WaitFor(10*time.Second, "the roster", func(s string) bool {
		return strings.Contains(s, `id="r1"`) && strings.Contains(s, r.bob.Bare) && strings.Contains(s, r.carol.Bare)
	})
	// Chat both ways with the /v1 user and the desktop client.
	page.Send("", `<message xmlns="jabber:client" to="`+r.bob.Bare+`" type="chat" id="b1"><body>oi bob</body></message>`)
	r.pb.waitFor(t, 10*time.Second, "alice's message", func(ev event) bool { return ev.Event == "message" && ev.Body == "oi bob" })
	r.bob.C.send(t, r.alice.Bare, "oi alice", false)
	page.WaitFor(10*time.Second, "bob's message", func(s string) bool { return strings.Contains(s, "oi alice") })
	page.Send("", `<message xmlns="jabber:client" to="`+r.carol.Bare+`" type="chat" id="c1"><body>oi carol</body></message>`)
	r.noPresenceFrom(t, "oi carol")
	if _, err := r.carol.Conn.Send(ctx, xmppconn.Message{To: r.alice.Bare, Body: "oi do desktop"}); err != nil {
		t.Fatal(err)
	}
	page.WaitFor(10*time.Second, "carol's message", func(s string) bool { return strings.Contains(s, "oi do desktop") })
	// The /v1 side of the same stream sees the same conversation.
	r.pa.waitFor(t, 10*time.Second, "carol's message on /v1", func(ev event) bool { return ev.Event == "message" && ev.Body == "oi do desktop" })

	// A reload: the page stops polling without a word; bob writes before
	// the new page attaches.
	r.bob.C.send(t, r.alice.Bare, "durante o reload", false)
	r.pa.waitFor(t, 10*time.Second, "the message reaching the stream", func(ev event) bool { return ev.Event == "message" && ev.Body == "durante o reload" })
	page2, _ := r.page(t)
	page2.Send("", `<presence xmlns="jabber:client"/>`)
	page2.WaitFor(10*time.Second, "the message sent during the reload", func(s string) bool { return strings.Contains(s, "durante o reload") })
	page2.Send("", `<message xmlns="jabber:client" to="`+r.carol.Bare+`" type="chat" id="c2"><body>voltei</body></message>`)
	r.noPresenceFrom(t, "voltei")
	page2.Send("", "")
	if n := page2.Count(func(s string) bool { return strings.Contains(s, "durante o reload") }); n != 0 {
		t.Fatalf("the message sent during the reload arrived %d more times", n)
	}
	// Status: a new show is the user's presence, seen by contacts.
	page2.Send("", `<presence xmlns="jabber:client"><show>away</show><status>almoço</status></presence>`)
	r.carol.waitFor(t, 10*time.Second, "alice away", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && bareJID(p.From) == r.alice.Bare && p.Show == "away" && p.Status == "almoço"
	})
	// Logout: the page gets terminate, carol sees alice go.
	r.e.logout(t, r.alice)
	deadline := time.Now().Add(15 * time.Second)
	for {
		b := page2.Send("", "")
		if b.Attr("type") == "terminate" {
			if !strings.Contains(page2.Last, "logged_out") {
				t.Fatalf("terminate at logout: %s", page2.Last)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no terminate after logout")
		}
	}
	r.carol.waitFor(t, 15*time.Second, "alice unavailable", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && bareJID(p.From) == r.alice.Bare && p.Type == "unavailable"
	})
	// The logged-out cookie opens nothing any more.
	c := sidecar.NewBOSHClient(t, r.e.D.URL+"/http-bind", "Cookie", "sessionid="+r.alice.SID, "Origin", r.e.D.URL)
	if st, _ := c.Post(ctx, `<body xmlns="http://jabber.org/protocol/httpbind" rid="7" to="`+r.e.XMPP.Domain+`" wait="5" hold="1"/>`); st != http.StatusUnauthorized {
		t.Fatalf("logged-out cookie: %d %s", st, c.Last)
	}
}

// TestE2EBOSHTabsAndIsolation: two tabs of alice share the stream; each
// gets its own IQ answers; an injected stanza ends only the tab that sent
// it; another user's cookie cannot use alice's sid; a foreign Origin is
// refused.
func TestE2EBOSHTabsAndIsolation(t *testing.T) {
	r := startBrowserRig(t, daemonOptions{})
	tabA, _ := r.page(t)
	tabB, _ := r.page(t)
	for _, tab := range []*sidecar.BOSHClient{tabA, tabB} {
		tab.Send("", `<presence xmlns="jabber:client"/>`)
		tab.Send("", `<iq xmlns="jabber:client" type="get" id="same"><query xmlns="jabber:iq:roster"/></iq>`)
	}
	for _, tab := range []*sidecar.BOSHClient{tabA, tabB} {
		tab.WaitFor(10*time.Second, "its roster", func(s string) bool { return strings.Contains(s, `id="same"`) && strings.Contains(s, r.bob.Bare) })
	}
	// A vCard of bob for tab A alone.
	tabA.Send("", `<iq xmlns="jabber:client" type="get" id="vc" to="`+r.bob.Bare+`"><vCard xmlns="vcard-temp"/></iq>`)
	tabA.WaitFor(10*time.Second, "bob's vCard", func(s string) bool { return strings.Contains(s, `id="vc"`) })
	// Both tabs get bob's message.
	r.bob.C.send(t, r.alice.Bare, "para as duas abas", false)
	for _, tab := range []*sidecar.BOSHClient{tabA, tabB} {
		tab.WaitFor(10*time.Second, "bob's message", func(s string) bool { return strings.Contains(s, "para as duas abas") })
	}
	tabB.Send("", "")
	for _, tab := range []*sidecar.BOSHClient{tabA, tabB} {
		if n := tab.Count(func(s string) bool { return strings.Contains(s, `id="same"`) || strings.Contains(s, `id="vc"`) }); n != 0 {
			t.Fatalf("a tab got an IQ answer twice or another tab's: %q", tab.Got)
		}
	}
	// Bob's cookie with alice's sid: refused; alice's tab is unharmed.
	thief := sidecar.NewBOSHClient(t, r.e.D.URL+"/http-bind", "Cookie", "sessionid="+r.bob.SID, "Origin", r.e.D.URL)
	thief.SID, thief.RID = tabA.SID, tabA.RID
	if b := thief.Send("", `<message xmlns="jabber:client" to="`+r.carol.Bare+`"><body>forjada</body></message>`); b.Attr("type") != "terminate" || b.Attr("condition") != "item-not-found" {
		t.Fatalf("a sid of another PHP session: %s", thief.Last)
	}
	// A foreign Origin (CSWSH / cross-site POST): 403.
	evil := sidecar.NewBOSHClient(t, r.e.D.URL+"/http-bind", "Cookie", "sessionid="+r.alice.SID, "Origin", "https://evil.example")
	if st, _ := evil.Post(t.Context(), `<body xmlns="http://jabber.org/protocol/httpbind" rid="7" to="`+r.e.XMPP.Domain+`" wait="5" hold="1"/>`); st != http.StatusForbidden {
		t.Fatalf("foreign origin: %d", st)
	}
	// Injection: a forged from is replaced by the stream's own; a
	// stream-level element ends tab B only; an oversized stanza too.
	tabA.Send("", `<message xmlns="jabber:client" from="`+r.bob.Bare+`/x" to="`+r.carol.Bare+`" type="chat"><body>de quem?</body></message>`)
	ev := r.carol.waitFor(t, 10*time.Second, "the forged-from message", func(ev xmppconn.Event) bool {
		m, ok := ev.(*xmppconn.Message)
		return ok && m.Body == "de quem?"
	})
	if bareJID(ev.(*xmppconn.Message).From) != r.alice.Bare {
		t.Fatalf("a forged from went through: %+v", ev)
	}
	if b := tabB.Send("", `<stream:features xmlns:stream="http://etherx.jabber.org/streams"/>`); b.Attr("type") != "terminate" {
		t.Fatalf("stream-level element: %s", tabB.Last)
	}
	r.bob.C.send(t, r.alice.Bare, "depois da injeção", false)
	tabA.WaitFor(10*time.Second, "a message after tab B was cut", func(s string) bool { return strings.Contains(s, "depois da injeção") })
	if b := tabA.Send("", `<message xmlns="jabber:client" to="`+r.bob.Bare+`"><body>`+strings.Repeat("x", 70<<10)+`</body></message>`); b.Attr("type") != "terminate" {
		t.Fatalf("oversized stanza: %s", tabA.Last)
	}
	r.pa.waitFor(t, 10*time.Second, "the stream still delivering", func(ev event) bool { return ev.Event == "message" && ev.Body == "depois da injeção" })
	r.bob.C.send(t, r.alice.Bare, "ainda online", false)
	r.pa.waitFor(t, 10*time.Second, "the stream after both tabs were cut", func(ev event) bool { return ev.Event == "message" && ev.Body == "ainda online" })
}

// TestE2EPrebind: PHP asks for a prebound BOSH session; the page attaches
// with jid, sid and rid (Strophe's attach) and chats; the sid dies with
// the PHP session.
func TestE2EPrebind(t *testing.T) {
	r := startBrowserRig(t, daemonOptions{})
	var pb struct {
		JID string `json:"jid"`
		SID string `json:"sid"`
		RID int64  `json:"rid"`
		URL string `json:"url"`
	}
	r.alice.C.mustCall(t, "POST", "/v1/prebind", nil, &pb, http.StatusOK)
	if !strings.HasPrefix(pb.JID, r.alice.Bare+"/") || len(pb.SID) < 32 || pb.RID <= 0 || pb.URL != "/http-bind" {
		t.Fatalf("prebind answered %+v", pb)
	}
	// The page: no cookie needed, no password anywhere.
	page := sidecar.NewBOSHClient(t, r.e.D.URL+"/http-bind", "Origin", r.e.D.URL)
	page.SID, page.RID = pb.SID, pb.RID-1
	r.e.secrets = append(r.e.secrets, pb.SID)
	page.Send("", `<presence xmlns="jabber:client"/>`)
	page.WaitFor(10*time.Second, "bob's presence", func(s string) bool { return strings.Contains(s, `from="`+r.bob.Bare+`/`) })
	page.Send("", `<message xmlns="jabber:client" to="`+r.carol.Bare+`" type="chat"><body>prebound</body></message>`)
	r.noPresenceFrom(t, "prebound")
	// Without X-Session-Id (a browser calling it): refused.
	req, _ := http.NewRequestWithContext(t.Context(), "POST", r.e.D.URL+"/v1/prebind", nil)
	req.Header.Set("Cookie", "sessionid="+r.alice.SID)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("prebind by cookie: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	r.e.logout(t, r.alice)
	deadline := time.Now().Add(15 * time.Second)
	for page.Send("", "").Attr("type") != "terminate" {
		if time.Now().After(deadline) {
			t.Fatal("the prebound sid outlived the PHP session")
		}
	}
	for _, secret := range []string{r.alice.Password, r.alice.SID} {
		if strings.Contains(page.Last, secret) {
			t.Fatal("a secret reached the page")
		}
	}
}

// wsClient is an RFC 7395 client. Like a browser it answers pings by
// itself, unless mute.
type wsClient struct {
	t     *testing.T
	ws    *websocket.Conn
	in    chan string
	mute  atomic.Bool // withhold pongs: what was written stays in flight
	pings chan string // the payloads of the pings received (dropped when full)
	conn  net.Conn    // the TCP connection, for frames the library does not send (forgePong)
}

func dialWS(t *testing.T, r *browserRig, origin, cookieSID string) (*wsClient, *http.Response, error) {
	return dialWSAt(t, r.e.D.URL, origin, cookieSID)
}

// dialWSAt opens an RFC 7395 WebSocket at base's /xmpp-websocket with
// origin and the PHP session cookie, its frames read into in.
func dialWSAt(t *testing.T, base, origin, cookieSID string) (*wsClient, *http.Response, error) {
	hdr := http.Header{}
	hdr.Set("Origin", origin)
	hdr.Set("Cookie", "sessionid="+cookieSID)
	url := "ws" + strings.TrimPrefix(base, "http") + "/xmpp-websocket"
	c := &wsClient{t: t, in: make(chan string, 256), pings: make(chan string, 64)}
	var dialer net.Dialer
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dialer.DialContext(ctx, network, addr)
		c.conn = conn
		return conn, err
	}}
	ws, resp, err := websocket.Dial(t.Context(), url, &websocket.DialOptions{
		Subprotocols: []string{"xmpp"}, HTTPHeader: hdr, HTTPClient: &http.Client{Transport: tr},
		OnPingReceived: func(_ context.Context, payload []byte) bool {
			select {
			case c.pings <- string(payload):
			default:
			}
			return !c.mute.Load()
		},
	})
	if err != nil {
		return nil, resp, err
	}
	c.ws = ws
	go func() {
		defer close(c.in)
		for {
			_, data, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			c.in <- string(data)
		}
	}()
	t.Cleanup(func() { ws.CloseNow() })
	return c, resp, nil
}

func (c *wsClient) send(s string) {
	c.t.Helper()
	if err := c.ws.Write(c.t.Context(), websocket.MessageText, []byte(s)); err != nil {
		c.t.Fatalf("ws write: %v", err)
	}
}

// forgePong sends a pong frame of payload (at most 125 bytes) the
// client's library would not: unsolicited, or not a ping's. The library
// writes nothing meanwhile (the test sends no frame at the same time, and
// a mute client answers no ping).
func (c *wsClient) forgePong(payload string) {
	c.t.Helper()
	// Final, opcode pong; masked with a zero key: the payload as it is.
	frame := append([]byte{0x8a, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
	if _, err := c.conn.Write(frame); err != nil {
		c.t.Fatalf("forged pong %q: %v", payload, err)
	}
}

func (c *wsClient) waitFor(what string, match func(string) bool) string {
	c.t.Helper()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case s, ok := <-c.in:
			if !ok {
				c.t.Fatalf("ws closed waiting for %s", what)
			}
			if match(s) {
				return s
			}
		case <-t.C:
			c.t.Fatalf("ws: timed out waiting for %s", what)
		}
	}
}

func contains(sub string) func(string) bool {
	return func(s string) bool { return strings.Contains(s, sub) }
}

func TestE2EWebSocket(t *testing.T) {
	r := startBrowserRig(t, daemonOptions{})
	dom := r.e.XMPP.Domain
	// A foreign Origin: refused before the upgrade.
	if _, resp, err := dialWS(t, r, "https://evil.example", r.alice.SID); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin: %v %v", resp, err)
	}
	c, _, err := dialWS(t, r, r.e.D.URL, r.alice.SID)
	if err != nil {
		t.Fatal(err)
	}
	c.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="` + dom + `" version="1.0"/>`)
	c.waitFor("open", contains("<open "))
	c.waitFor("SASL features", contains("<mechanism>PLAIN</mechanism>"))
	c.send(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">` + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00whatever")) + `</auth>`)
	c.waitFor("success", contains("<success"))
	c.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="` + dom + `" version="1.0"/>`)
	c.waitFor("bind features", contains("xmpp-bind"))
	c.send(`<iq xmlns="jabber:client" type="set" id="b"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></iq>`)
	c.waitFor("bound", contains("<jid>"+r.alice.Bare+"/"))
	c.send(`<presence xmlns="jabber:client"/>`)
	c.waitFor("carol's presence", contains(`from="`+r.carol.Bare+`/desktop"`))
	c.send(`<message xmlns="jabber:client" to="` + r.carol.Bare + `" type="chat"><body>pelo websocket</body></message>`)
	r.noPresenceFrom(t, "pelo websocket")
	r.bob.C.send(t, r.alice.Bare, "para o websocket", false)
	c.waitFor("bob's message", contains("para o websocket"))
	// The tab closes: a detach, no flap.
	c.send(`<close xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>`)
	c.waitFor("close", contains("<close"))
	r.bob.C.send(t, r.alice.Bare, "depois do close", false)
	r.pa.waitFor(t, 10*time.Second, "the stream still up", func(ev event) bool { return ev.Event == "message" && ev.Body == "depois do close" })
	c2, _, err := dialWS(t, r, r.e.D.URL, r.alice.SID)
	if err != nil {
		t.Fatal(err)
	}
	c2.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="` + dom + `" version="1.0"/>`)
	c2.waitFor("SASL features", contains("PLAIN"))
	// Someone else's name in SASL: not-authorized.
	c2.send(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">` + base64.StdEncoding.EncodeToString([]byte("\x00bob\x00bob-pw")) + `</auth>`)
	c2.waitFor("failure", contains("<not-authorized/>"))
	c2.send(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">` + base64.StdEncoding.EncodeToString([]byte("\x00\x00x")) + `</auth>`)
	c2.waitFor("success", contains("<success"))
	c2.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="` + dom + `" version="1.0"/>`)
	c2.send(`<iq xmlns="jabber:client" type="set" id="b"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></iq>`)
	c2.waitFor("bound", contains("<jid>"))
	c2.waitFor("the message sent while no tab was attached", contains("depois do close"))
	// Logout: a stream error and <close/>.
	r.e.logout(t, r.alice)
	c2.waitFor("the logout stream error", contains("logged_out"))
	c2.waitFor("close", contains("<close"))
}

// TestE2EBOSHRoomReplay: a page attaching to a stream that is in a room
// gets the room's occupants (itself last, with status 110) and subject, as
// if it had joined, while the other occupants see no leave or join; it
// then talks in the room like any occupant.
func TestE2EBOSHRoomReplay(t *testing.T) {
	r := startBrowserRig(t, daemonOptions{Prosody: xmppconntest.Options{MUC: true}})
	room := "replay@" + r.e.XMPP.MUCDomain
	r.alice.C.mustCall(t, "POST", "/v1/rooms/"+room+"/join", map[string]any{"nick": "Alice"}, nil, http.StatusOK)
	r.bob.C.mustCall(t, "POST", "/v1/rooms/"+room+"/join", map[string]any{"nick": "Bob"}, nil, http.StatusOK)
	r.alice.C.mustCall(t, "PUT", "/v1/rooms/"+room+"/subject", map[string]any{"subject": "Pauta de hoje"}, nil, http.StatusNoContent)
	r.pb.waitFor(t, 10*time.Second, "the subject", func(ev event) bool { return ev.Event == "message" && ev.Subject == "Pauta de hoje" })
	// The stream knows the subject before the page attaches: what the
	// page gets is the replay, not the room's live subject change.
	r.pa.waitFor(t, 10*time.Second, "the subject on alice's stream", func(ev event) bool { return ev.Event == "message" && ev.Subject == "Pauta de hoje" })
	page, _ := r.page(t)
	page.Send("", `<presence xmlns="jabber:client"/>`)
	bobIn := page.WaitFor(10*time.Second, "bob in the room", func(s string) bool { return strings.Contains(s, `from="`+room+`/Bob"`) })
	self := page.WaitFor(10*time.Second, "alice's own occupant", func(s string) bool {
		return strings.Contains(s, `from="`+room+`/Alice"`) && (strings.Contains(s, `code="110"`) || strings.Contains(s, `code='110'`))
	})
	// From the occupant who set it, as Prosody sends it to whoever joins
	// (XEP-0045 §7.2.15 allows that or the room's bare JID): the replay
	// says it as the room said it.
	page.WaitFor(10*time.Second, "the subject", func(s string) bool {
		return strings.Contains(s, `from="`+room+`/Alice"`) && strings.Contains(s, "<subject>Pauta de hoje</subject>")
	})
	if !strings.Contains(self, `affiliation="owner"`) || !strings.Contains(bobIn, `role="participant"`) {
		t.Fatalf("occupants replayed as %s and %s", self, bobIn)
	}
	page.Send("", `<message xmlns="jabber:client" to="`+room+`" type="groupchat" id="g1"><body>voltei para a sala</body></message>`)
	r.pb.waitFor(t, 10*time.Second, "alice in the room", func(ev event) bool {
		if ev.Event == "room" && ev.Nick == "Alice" {
			t.Errorf("bob saw alice's occupant presence change on attach: %+v", ev)
		}
		return ev.Event == "message" && ev.Body == "voltei para a sala" && ev.Nick == "Alice"
	})
	page.WaitFor(10*time.Second, "the room's echo", func(s string) bool { return strings.Contains(s, "voltei para a sala") })
	if n := page.Count(func(s string) bool { return strings.Contains(s, "<subject") }); n != 0 {
		t.Errorf("the page got the subject %d more times: %q", n, page.Got)
	}
}

// TestE2EBOSHClientRoomReload: a page joins a room itself (as converse.js
// does from its bookmarks) and is reloaded; the new page's join is
// answered with the occupants and subject, and the other occupants see no
// leave, join or presence change.
func TestE2EBOSHClientRoomReload(t *testing.T) {
	r := startBrowserRig(t, daemonOptions{Prosody: xmppconntest.Options{MUC: true}})
	room := "pagina@" + r.e.XMPP.MUCDomain
	r.bob.C.mustCall(t, "POST", "/v1/rooms/"+room+"/join", map[string]any{"nick": "Bob"}, nil, http.StatusOK)
	r.bob.C.mustCall(t, "PUT", "/v1/rooms/"+room+"/subject", map[string]any{"subject": "Assunto"}, nil, http.StatusNoContent)
	join := `<presence xmlns="jabber:client" to="` + room + `/Alice"><x xmlns="http://jabber.org/protocol/muc"><history maxstanzas="0"/></x></presence>`
	page, _ := r.page(t)
	page.Send("", `<presence xmlns="jabber:client"/>`)
	page.Send("", join)
	page.WaitFor(10*time.Second, "the page in the room", func(s string) bool {
		return strings.Contains(s, `from="`+room+`/Alice"`) && (strings.Contains(s, `code="110"`) || strings.Contains(s, `code='110'`))
	})
	page.WaitFor(10*time.Second, "the subject", func(s string) bool { return strings.Contains(s, "<subject>Assunto</subject>") })
	r.pb.waitFor(t, 10*time.Second, "alice joining", func(ev event) bool { return ev.Event == "room" && ev.Nick == "Alice" && ev.Type == "available" })

	page2, _ := r.page(t)
	page2.Send("", `<presence xmlns="jabber:client"/>`)
	page2.Send("", join)
	page2.WaitFor(10*time.Second, "bob in the room", func(s string) bool { return strings.Contains(s, `from="`+room+`/Bob"`) })
	page2.WaitFor(10*time.Second, "itself in the room", func(s string) bool {
		return strings.Contains(s, `from="`+room+`/Alice"`) && (strings.Contains(s, `code="110"`) || strings.Contains(s, `code='110'`))
	})
	page2.WaitFor(10*time.Second, "the subject", func(s string) bool { return strings.Contains(s, "<subject>Assunto</subject>") })
	page2.Send("", `<message xmlns="jabber:client" to="`+room+`" type="groupchat"><body>de volta</body></message>`)
	r.pb.waitFor(t, 10*time.Second, "alice's message", func(ev event) bool {
		if ev.Event == "room" && ev.Nick == "Alice" {
			t.Errorf("bob saw alice's occupant presence on the reload: %+v", ev)
		}
		return ev.Event == "message" && ev.Body == "de volta" && ev.Nick == "Alice"
	})
}
