package sidecar

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// BOSHClient is a minimal XEP-0124/0206 client for the tests: one request
// at a time, like a page with hold=1 between its sends.
type BOSHClient struct {
	t    testing.TB
	url  string
	hc   *http.Client
	hdr  http.Header
	SID  string
	RID  int64
	Wait int
	mu   sync.Mutex
	Got  []string // stanzas received, in order
	Last string   // the last raw response
}

func NewBOSHClient(t testing.TB, url string, hdr ...string) *BOSHClient {
	c := &BOSHClient{t: t, url: url, hc: &http.Client{Timeout: 90 * time.Second}, hdr: http.Header{}, RID: 1000, Wait: 3}
	for i := 0; i+1 < len(hdr); i += 2 {
		c.hdr.Set(hdr[i], hdr[i+1])
	}
	return c
}

// Via sends the client's requests through rt (a test's load balancer).
func (c *BOSHClient) Via(rt http.RoundTripper) *BOSHClient {
	c.hc.Transport = rt
	return c
}

// post sends one raw body and returns the status and parsed response.
func (c *BOSHClient) Post(ctx context.Context, body string) (int, *boshBody) {
	c.t.Helper()
	req, err := http.NewRequestWithContext(ctx, "POST", c.url, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header = c.hdr.Clone()
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("bosh post: %v", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	c.mu.Lock()
	c.Last = string(data)
	c.mu.Unlock()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	b, err := parseBOSHBody(data)
	if err != nil {
		c.t.Fatalf("bosh response %q: %v", data, err)
	}
	c.mu.Lock()
	for _, k := range b.kids {
		c.Got = append(c.Got, string(k.raw))
	}
	c.mu.Unlock()
	return resp.StatusCode, b
}

// send posts payload with the next rid (attrs are more body attributes),
// again with the same rid on a 5xx answer (postAgain).
func (c *BOSHClient) Send(attrs, payload string) *boshBody {
	c.t.Helper()
	c.RID++
	st, b := c.postAgain(`<body xmlns="http://jabber.org/protocol/httpbind" xmlns:xmpp="urn:xmpp:xbosh" rid="` +
		strconv.FormatInt(c.RID, 10) + `" sid="` + c.SID + `" ` + attrs + `>` + payload + `</body>`)
	if st != http.StatusOK {
		c.t.Fatalf("bosh: HTTP %d: %s", st, c.Last)
	}
	return b
}

// postAgain is Post, sending the body again on a 5xx answer as
// Strophe.js does with every request: up to 5 sends, waiting sends³
// seconds but at most 1.1 × wait between them. A cluster node answers
// 503 when Redis is too slow for the session's claim or owner lookup.
func (c *BOSHClient) postAgain(body string) (int, *boshBody) {
	c.t.Helper()
	st, b := c.Post(c.t.Context(), body)
	for sends := 1; st >= 500 && sends < 5; sends++ {
		time.Sleep(min(time.Duration(sends*sends*sends)*time.Second, time.Duration(c.Wait)*1100*time.Millisecond))
		st, b = c.Post(c.t.Context(), body)
	}
	return st, b
}

// create opens a session with the cookie and checks the answer; a 5xx
// answer is sent again (postAgain).
func (c *BOSHClient) Create(to string) *boshBody {
	c.t.Helper()
	st, b := c.postAgain(`<body xmlns="http://jabber.org/protocol/httpbind" xmlns:xmpp="urn:xmpp:xbosh" content="text/xml; charset=utf-8" hold="1" rid="` +
		strconv.FormatInt(c.RID, 10) + `" to="` + to + `" ver="1.6" wait="` + strconv.Itoa(c.Wait) + `" xmpp:version="1.0"/>`)
	if st != http.StatusOK || b == nil || b.attrs["sid"] == "" {
		c.t.Fatalf("bosh create: HTTP %d: %s", st, c.Last)
	}
	c.SID = b.attrs["sid"]
	return b
}

// login runs SASL PLAIN (authcid user, any password), the restart, bind,
// session and the initial presence.
func (c *BOSHClient) Login(user, password string) string {
	c.t.Helper()
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
	b := c.Send("", `<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">`+plain+`</auth>`)
	if len(b.kids) != 1 || b.kids[0].name.Local != "success" {
		c.t.Fatalf("bosh auth: %s", c.Last)
	}
	c.Send(`xmpp:restart="true"`, "")
	if !strings.Contains(c.Last, "urn:ietf:params:xml:ns:xmpp-bind") {
		c.t.Fatalf("bosh restart: %s", c.Last)
	}
	c.Send("", `<iq xmlns="jabber:client" type="set" id="bind1"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>web</resource></bind></iq>`)
	jid := c.WaitFor(5*time.Second, "bind result", func(s string) bool { return strings.Contains(s, `id="bind1"`) })
	c.Send("", `<iq xmlns="jabber:client" type="set" id="sess1"><session xmlns="urn:ietf:params:xml:ns:xmpp-session"/></iq>`)
	c.WaitFor(5*time.Second, "session result", func(s string) bool { return strings.Contains(s, `id="sess1"`) })
	start := strings.Index(jid, "<jid>") + len("<jid>")
	return jid[start:strings.Index(jid, "</jid>")]
}

// waitFor polls until a received stanza matches, and returns it; matched
// stanzas are consumed.
func (c *BOSHClient) WaitFor(timeout time.Duration, what string, match func(string) bool) string {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		for i, s := range c.Got {
			if match(s) {
				c.Got = append(c.Got[:i:i], c.Got[i+1:]...)
				c.mu.Unlock()
				return s
			}
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			c.t.Fatalf("bosh: timed out waiting for %s; got %q", what, c.Got)
		}
		b := c.Send("", "")
		if b.attrs["type"] == "terminate" {
			c.t.Fatalf("bosh: terminated waiting for %s: %s", what, c.Last)
		}
	}
}

// count is how many received stanzas match (without polling).
func (c *BOSHClient) Count(match func(string) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.Got {
		if match(s) {
			n++
		}
	}
	return n
}

// boshHarness serves the harness as the daemon does (the connection
// limit, held BOSH requests parked: boshpark.go); boshHarnessUnparked keeps them in their handlers,
// as over HTTP/2.
func boshHarness(t testing.TB) (*harness, *httptest.Server) {
	h := newHarness(t, "")
	srv := httptest.NewUnstartedServer(h.srv)
	rl := newResumeListener(newLimitListener(srv.Listener, 1000, func() {}))
	srv.Listener = rl
	srv.Config.IdleTimeout = 120 * time.Second
	h.api.parked = newParker(h.api, rl, srv.Config)
	h.api.parked.repoll = h.srv // as serve sets it (repoll.go)
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.api.parked.shutdown(ctx)
	})
	return h, srv
}

func boshHarnessUnparked(t testing.TB) (*harness, *httptest.Server) {
	h := newHarness(t, "")
	srv := httptest.NewServer(h.srv)
	t.Cleanup(srv.Close)
	return h, srv
}

func (h *harness) newBOSH(srv *httptest.Server, id string) *BOSHClient {
	return NewBOSHClient(h.t, srv.URL+"/http-bind", "Cookie", "sessionid="+id, "Origin", srv.URL)
}

// serverStanza hands the bridge a stanza as if the server sent it.
func (h *harness) serverStanza(raw string) {
	h.t.Helper()
	st, err := xmppconn.ParseStanza([]byte(raw), 1<<20)
	if err != nil {
		h.t.Fatal(err)
	}
	st.From = st.Attr("from")
	h.tap(st)
}

func TestBOSHLoginAndChat(t *testing.T) {
	for name, start := range map[string]func(testing.TB) (*harness, *httptest.Server){"parked": boshHarness, "in-handler": boshHarnessUnparked} {
		t.Run(name, func(t *testing.T) { testBOSHLoginAndChat(t, start) })
	}
}

func testBOSHLoginAndChat(t *testing.T, start func(testing.TB) (*harness, *httptest.Server)) {
	h, srv := start(t)
	c := h.newBOSH(srv, goodID)
	b := c.Create("example.test")
	for k, want := range map[string]string{"ver": "1.6", "hold": "1", "requests": "2", "wait": "3", "xmpp:version": "1.0"} {
		if b.attrs[k] != want {
			t.Errorf("session creation %s = %q, want %q", k, b.attrs[k], want)
		}
	}
	if len(b.attrs["sid"]) < 32 || !strings.Contains(c.Last, "<mechanism>PLAIN</mechanism>") {
		t.Fatalf("session creation answer: %s", c.Last)
	}
	// Someone else's name: refused, the stream stays for a retry.
	wrong := base64.StdEncoding.EncodeToString([]byte("\x00mallory\x00x"))
	if b := c.Send("", `<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">`+wrong+`</auth>`); len(b.kids) != 1 || b.kids[0].name.Local != "failure" {
		t.Fatalf("auth as someone else: %s", c.Last)
	}
	jid := c.Login("alice", "placeholder-not-a-password")
	if jid != h.conn.jid {
		t.Fatalf("bound %q, want the stream's %q", jid, h.conn.jid)
	}
	// The first presence replays the contacts' presences.
	h.handler.HandleEvent(&xmppconn.Presence{From: "bob@example.test/desk", Type: "available", Show: "away", Status: "lunch"})
	c.Send("", `<presence xmlns="jabber:client"/>`)
	c.WaitFor(5*time.Second, "bob's presence", func(s string) bool {
		return strings.Contains(s, `from="bob@example.test/desk"`) && strings.Contains(s, "<show>away</show>")
	})
	// Same presence as the user's: not sent again (no flap).
	if n := len(h.conn.stanzaLog()); n != 0 {
		t.Fatalf("the initial presence went upstream: %v", h.conn.stanzaLog())
	}
	// A message out, with a forged from: sent as the user's.
	c.Send("", `<message xmlns="jabber:client" from="bob@example.test/x" to="bob@example.test" type="chat" id="m1"><body>oi</body></message>`)
	sent := h.conn.stanzaLog()
	if len(sent) != 1 || strings.Contains(sent[0], "from=") || !strings.Contains(sent[0], "<body>oi</body>") {
		t.Fatalf("sent %q", sent)
	}
	// A message in.
	h.serverStanza(`<message from="bob@example.test/desk" to="` + jid + `" type="chat" id="r1"><body>olá</body></message>`)
	c.WaitFor(5*time.Second, "bob's message", func(s string) bool {
		return strings.Contains(s, "olá") && strings.Contains(s, `xmlns="jabber:client"`)
	})
	// Terminate: the client detaches, the user's stream stays.
	b = c.Send(`type="terminate"`, `<presence xmlns="jabber:client" type="unavailable"/>`)
	if b.attrs["type"] != "terminate" {
		t.Fatalf("terminate answered %s", c.Last)
	}
	if len(h.conn.stanzaLog()) != 1 || h.conn.isClosed() {
		t.Fatalf("a tab closing changed the user's presence: %q closed=%v", h.conn.stanzaLog(), h.conn.closed)
	}
	h.checkNoSecrets(c.SID, "placeholder-not-a-password")
}

func (h *harness) checkNoSecrets(secrets ...string) {
	h.t.Helper()
	h.logMu.Lock()
	defer h.logMu.Unlock()
	for _, s := range append(secrets, goodID) {
		if strings.Contains(h.logs.String(), s) {
			h.t.Errorf("the log contains a secret %q...", s[:4])
		}
	}
}

func TestBOSHRIDWindow(t *testing.T) {
	for name, start := range map[string]func(testing.TB) (*harness, *httptest.Server){"parked": boshHarness, "in-handler": boshHarnessUnparked} {
		t.Run(name, func(t *testing.T) { testBOSHRIDWindow(t, start) })
	}
}

func testBOSHRIDWindow(t *testing.T, start func(testing.TB) (*harness, *httptest.Server)) {
	h, srv := start(t)
	c := h.tab(srv)
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="w1"><body>one</body></message>`)
	c.Send("", "")
	first := c.Last
	if !strings.Contains(first, "one") {
		t.Fatalf("poll: %s", first)
	}
	// The same rid again (the answer was lost): the same answer.
	c.RID--
	c.Send("", "")
	if c.Last != first {
		t.Fatalf("retransmission answered %s, want %s", c.Last, first)
	}
	// Out of the window: the session ends.
	c.RID += 5
	if b := c.Send("", ""); b.attrs["type"] != "terminate" || b.attrs["condition"] != "item-not-found" {
		t.Fatalf("rid out of window: %s", c.Last)
	}
	if h.bosh().get(c.SID) != nil {
		t.Fatal("session kept after a fatal rid")
	}
}

func (h *harness) bosh() *boshServer { return h.api.bosh }

func TestBOSHHostile(t *testing.T) {
	h, srv := boshHarness(t)
	other := "othersession0123456789abcdefghijk"
	h.reader.set(other, "mallory", "m-pw")
	// A foreign Origin: 403, before anything else.
	foreign := NewBOSHClient(t, srv.URL+"/http-bind", "Cookie", "sessionid="+goodID, "Origin", "https://evil.example")
	if st, _ := foreign.Post(t.Context(), `<body xmlns="http://jabber.org/protocol/httpbind" rid="5" to="example.test" wait="3" hold="1"/>`); st != http.StatusForbidden {
		t.Fatalf("foreign origin: %d %s", st, foreign.Last)
	}
	// No cookie, no session.
	anon := NewBOSHClient(t, srv.URL+"/http-bind", "Origin", srv.URL)
	if st, _ := anon.Post(t.Context(), `<body xmlns="http://jabber.org/protocol/httpbind" rid="5" to="example.test" wait="3" hold="1"/>`); st != http.StatusUnauthorized {
		t.Fatalf("no cookie: %d %s", st, anon.Last)
	}
	// A cookie of a logged-out session.
	h.reader.errs["loggedoutsession0123456789abcdef"] = fmt.Errorf("wrapped: %w", phpsession.ErrNotLoggedIn)
	out := h.newBOSH(srv, "loggedoutsession0123456789abcdef")
	if st, _ := out.Post(t.Context(), `<body xmlns="http://jabber.org/protocol/httpbind" rid="5" to="example.test" wait="3" hold="1"/>`); st != http.StatusUnauthorized {
		t.Fatalf("logged-out cookie: %d %s", st, out.Last)
	}
	// Alice's sid with Mallory's cookie: refused, Alice's stream is fine.
	alice := h.tab(srv)
	thief := h.newBOSH(srv, other)
	thief.SID, thief.RID = alice.SID, alice.RID
	if b := thief.Send("", ""); b.attrs["type"] != "terminate" || b.attrs["condition"] != "item-not-found" {
		t.Fatalf("a sid from another PHP session: %s", thief.Last)
	}
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="h1"><body>still here</body></message>`)
	alice.WaitFor(5*time.Second, "a message after the theft attempt", func(s string) bool { return strings.Contains(s, "still here") })
	// Malformed and oversized bodies.
	for name, body := range map[string]string{
		"not xml":   "<body",
		"not body":  `<iq xmlns="jabber:client"/>`,
		"two roots": `<body xmlns="http://jabber.org/protocol/httpbind" rid="1"/><body xmlns="http://jabber.org/protocol/httpbind" rid="2"/>`,
		"dtd":       `<!DOCTYPE x [<!ENTITY a "b">]><body xmlns="http://jabber.org/protocol/httpbind" rid="1"/>`,
		"no rid":    `<body xmlns="http://jabber.org/protocol/httpbind" sid="x"/>`,
	} {
		if st, _ := alice.Post(t.Context(), body); st != http.StatusBadRequest {
			t.Errorf("%s: %d %s", name, st, alice.Last)
		}
	}
	if st, _ := alice.Post(t.Context(), `<body xmlns="http://jabber.org/protocol/httpbind" rid="1">`+strings.Repeat("x", boshMaxBody)+`</body>`); st != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d", st)
	}
	if st, _ := alice.Post(t.Context(), ""); st != http.StatusBadRequest {
		t.Errorf("empty body: %d", st)
	}
}

// TestBridgeIsolation: two tabs of one user. An IQ's answer reaches only
// the tab that asked, under its own id; a forged answer reaches nobody; a
// stream-level element ends the tab that sent it and no other.
func TestBridgeIsolation(t *testing.T) {
	h, srv := boshHarness(t)
	a, b := h.tab(srv), h.tab(srv)
	a.Send("", `<iq xmlns="jabber:client" type="get" id="same"><query xmlns="jabber:iq:roster"/></iq>`)
	b.Send("", `<iq xmlns="jabber:client" type="get" id="same"><query xmlns="jabber:iq:roster"/></iq>`)
	sent := h.conn.stanzaLog()
	if len(sent) != 2 || strings.Contains(sent[0], `id="same"`) {
		t.Fatalf("IQs sent with the clients' ids: %q", sent)
	}
	idA := attrOf(sent[0], "id")
	// A forged answer with the client's own id, and one from a contact.
	h.serverStanza(`<iq type="result" id="same"><query xmlns="jabber:iq:roster"><item jid="forged@example.test"/></query></iq>`)
	h.serverStanza(`<iq type="result" from="eve@example.test/x" id="` + idA + `"><query xmlns="jabber:iq:roster"><item jid="eve@example.test"/></query></iq>`)
	h.serverStanza(`<iq type="result" id="` + idA + `"><query xmlns="jabber:iq:roster"><item jid="bob@example.test"/></query></iq>`)
	a.WaitFor(5*time.Second, "A's roster", func(s string) bool {
		return strings.Contains(s, `id="same"`) && strings.Contains(s, "bob@example.test")
	})
	b.Send("", "")
	for _, c := range []*BOSHClient{a, b} {
		if n := c.Count(func(s string) bool {
			return strings.Contains(s, "forged") || strings.Contains(s, "eve@") || strings.Contains(s, "bob@example.test\"/>")
		}); n != 0 {
			t.Fatalf("a client got someone else's or a forged answer: %q", c.Got)
		}
	}
	// Injection: a stream-level element ends B only.
	if r := b.Send("", `<enable xmlns="urn:xmpp:sm:3"/>`); r.attrs["type"] != "terminate" || !strings.Contains(b.Last, "policy-violation") {
		t.Fatalf("stream-level element: %s", b.Last)
	}
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="i1"><body>after</body></message>`)
	a.WaitFor(5*time.Second, "a message after B was cut off", func(s string) bool { return strings.Contains(s, "after") })
	// An oversized stanza ends A (the user's stream is untouched).
	big := `<message xmlns="jabber:client" to="bob@example.test"><body>` + strings.Repeat("x", maxClientStanza) + `</body></message>`
	if r := a.Send("", big); r.attrs["type"] != "terminate" {
		t.Fatalf("oversized stanza: %s", a.Last)
	}
	if h.conn.isClosed() {
		t.Fatal("a bad client closed the user's stream")
	}
	if n := h.metric("imsidecar_browser_stanzas_rejected_total"); n != "2" {
		t.Errorf("imsidecar_browser_stanzas_rejected_total = %s, want 2", n)
	}
	if n := h.metric("imsidecar_browser_streams"); n != "0" {
		t.Errorf("imsidecar_browser_streams = %s after both tabs were cut off, want 0", n)
	}
}

func attrOf(raw, name string) string {
	i := strings.Index(raw, ` `+name+`="`)
	if i < 0 {
		return ""
	}
	rest := raw[i+len(name)+3:]
	return rest[:strings.IndexByte(rest, '"')]
}

// TestBridgeKeepsWhileDetached: what arrives with no tab attached reaches
// the next tab once; a page reload (a client that never polls again)
// loses nothing.
func TestBridgeKeepsWhileDetached(t *testing.T) {
	h, srv := boshHarness(t)
	a := h.tab(srv)
	a.Send(`type="terminate"`, "")
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="k1"><body>while away</body></message>`)
	// The next page gets it, once.
	b := h.tab(srv)
	b.WaitFor(5*time.Second, "the message sent while detached", func(s string) bool { return strings.Contains(s, "while away") })
	// Then b is reloaded: it stops polling without saying so; a message
	// arrives before the new page attaches.
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="k2"><body>during reload</body></message>`)
	c := h.tab(srv)
	c.WaitFor(5*time.Second, "the message sent during the reload", func(s string) bool { return strings.Contains(s, "during reload") })
	c.Send("", "")
	for _, body := range []string{"while away", "during reload"} {
		if n := c.Count(func(s string) bool { return strings.Contains(s, body) }); n != 0 {
			t.Fatalf("%q reached the new page again", body)
		}
	}
}

// TestBridgeLogout: the user's stream closing (logout) ends every tab
// with a stream error, and a held request answers at once.
func TestBridgeLogout(t *testing.T) {
	h, srv := boshHarness(t)
	a := h.newBOSH(srv, goodID)
	a.Wait = 30
	a.Create("example.test")
	a.Login("alice", "x")
	done := make(chan *boshBody)
	go func() {
		a.RID++
		_, b := a.Post(context.Background(), `<body xmlns="http://jabber.org/protocol/httpbind" rid="`+strconv.FormatInt(a.RID, 10)+`" sid="`+a.SID+`"/>`)
		done <- b
	}()
	time.Sleep(200 * time.Millisecond) // let the poll be held
	h.reg.closeSession(h.reg.get(goodID), "logged_out")
	select {
	case b := <-done:
		if b == nil || b.attrs["type"] != "terminate" || !strings.Contains(a.Last, "logged_out") {
			t.Fatalf("held request at logout: %s", a.Last)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held request was not answered at logout")
	}
}

// stanzaLog is what SendStanza sent, rendered.
func (c *fakeConn) stanzaLog() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.stanzas...)
}

func (c *fakeConn) SendStanza(_ context.Context, st *xmppconn.Stanza) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st.From = ""
	c.stanzas = append(c.stanzas, string(st.Bytes()))
	if st.Kind == "presence" && st.To == "" {
		p := st.Presence()
		c.pres = append(c.pres, p)
	}
	return nil
}

func (c *fakeConn) Presence() xmppconn.Presence {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pres) == 0 {
		return xmppconn.Presence{}
	}
	return c.pres[len(c.pres)-1]
}

func FuzzParseBOSHBody(f *testing.F) {
	for _, s := range []string{
		`<body xmlns="http://jabber.org/protocol/httpbind" rid="1" sid="x"><message xmlns="jabber:client" to="a@b"><body>hi</body></message></body>`,
		`<?xml version="1.0"?><body xmlns="http://jabber.org/protocol/httpbind" xmlns:xmpp="urn:xmpp:xbosh" rid="9" xmpp:restart="true"/>`,
		`<body xmlns="http://jabber.org/protocol/httpbind" rid="2"><auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">AGEAYg==</auth></body>`,
		`<body xmlns="http://jabber.org/protocol/httpbind"><iq/><presence/></body>`,
		`<body xmlns="http://jabber.org/protocol/httpbind"><!-- c --></body>`,
		`<body`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := parseBOSHBody(data)
		if err != nil {
			return
		}
		b.ridOf()
		for _, k := range b.kids {
			if len(k.raw) == 0 || k.raw[0] != '<' {
				t.Fatalf("child %q does not start an element", k.raw)
			}
			xmppconn.ParseStanza(k.raw, maxClientStanza)
		}
	})
}

func (c *fakeConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Attr returns a response attribute (for the e2e tests).
func (b *boshBody) Attr(name string) string { return b.attrs[name] }

// TestBOSHExpressoQuirks is a stand-in for Expresso 2.5's messenger
// (jquery.xmpp.js): single-quoted bodies posted as form data, a session
// creation read for its sid and "mechanism:contains('PLAIN')" after
// rewriting <body to <div class='body', a PLAIN blob with "==" appended,
// stanzas without a namespace, a roster request without an id, forged
// froms, and sends overlapping the held poll (hold=1).
func TestBOSHExpressoQuirks(t *testing.T) {
	h, srv := boshHarness(t)
	c := h.newBOSH(srv, goodID)
	c.hdr.Set("Content-Type", "application/x-www-form-urlencoded; charset=UTF-8")
	post := func(body string) string {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), "POST", c.url, strings.NewReader(body))
		req.Header = c.hdr.Clone()
		resp, err := c.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("HTTP %d: %s", resp.StatusCode, data)
		}
		// What the messenger does before handing the answer to jQuery.
		html := strings.ReplaceAll(string(data), "</body>", "</div>")
		return strings.ReplaceAll(html, "<body", "<div class='body'")
	}
	rid := int64(4711)
	next := func() string { rid++; return strconv.FormatInt(rid, 10) }
	first := post(`<body rid='` + strconv.FormatInt(rid, 10) + `' xmlns='http://jabber.org/protocol/httpbind' to='example.test' xml:lang='en' wait='20' inactivity='60' hold='1' content='text/xml; charset=utf-8' ver='1.6' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>`)
	if !strings.HasPrefix(first, "<div class='body'") || !strings.Contains(first, "<mechanism>PLAIN</mechanism>") {
		t.Fatalf("session creation as the messenger reads it: %s", first)
	}
	sid := attrOf(first, "sid")
	blob := base64.StdEncoding.EncodeToString([]byte("alice@example.test\x00alice\x00placeholder")) + "=="
	if r := post(`<body rid='` + next() + `' xmlns='http://jabber.org/protocol/httpbind' sid='` + sid + `'><auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>` + blob + `</auth></body>`); !strings.Contains(r, "<success") {
		t.Fatalf("auth: %s", r)
	}
	post(`<body rid='` + next() + `' xmlns='http://jabber.org/protocol/httpbind' sid='` + sid + `' to='example.test' xml:lang='en' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'/>`)
	if r := post(`<body rid='` + next() + `' xmlns='http://jabber.org/protocol/httpbind' sid='` + sid + `'><iq type='set' id='_bind_auth_2' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>Expresso</resource></bind></iq></body>`); !strings.Contains(r, "<jid>"+h.conn.jid+"</jid>") {
		t.Fatalf("bind: %s", r)
	}
	post(`<body rid='` + next() + `' xmlns='http://jabber.org/protocol/httpbind' sid='` + sid + `'><iq type='set' id='_session_auth_2' xmlns='jabber:client'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq></body>`)

	// The roster request: no namespace, no id.
	rosterRID := next()
	answered := make(chan string, 1)
	go func() {
		answered <- post(`<body rid='` + rosterRID + `' xmlns='http://jabber.org/protocol/httpbind' sid='` + sid + `'><iq type='get'><query xmlns='jabber:iq:roster'/></iq></body>`)
	}()
	var sent []string
	for deadline := time.Now().Add(5 * time.Second); len(sent) == 0; sent = h.conn.stanzaLog() {
		if time.Now().After(deadline) {
			t.Fatal("the roster request was not sent")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(sent) != 1 || !strings.Contains(sent[0], `xmlns="jabber:client"`) {
		t.Fatalf("roster request sent as %q", sent)
	}
	h.serverStanza(`<iq type="result" id="` + attrOf(sent[0], "id") + `"><query xmlns="jabber:iq:roster"><item jid="bob@example.test" subscription="both"/></query></iq>`)
	r := <-answered
	if !strings.Contains(r, `<iq xmlns="jabber:client" type="result"><query`) || !strings.Contains(r, "bob@example.test") {
		t.Fatalf("the roster answer, without an id, as the messenger reads it: %s", r)
	}

	// The poll is held; a chat state with a forged from and a message
	// overlap it: the poll is answered at once (hold=1) while the send's
	// request is the one held now.
	polled := make(chan string, 1)
	pollRID := next()
	go func() {
		polled <- post(`<body rid='` + pollRID + `' xmlns='http://jabber.org/protocol/httpbind' sid='` + sid + `'></body>`)
	}()
	bs := h.bosh().get(sid)
	for deadline := time.Now().Add(5 * time.Second); bs.heldCount() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the poll was not held")
		}
	}
	sendRID := next()
	sendDone := make(chan string, 1)
	go func() {
		sendDone <- post(`<body rid='` + sendRID + `' xmlns='http://jabber.org/protocol/httpbind' sid='` + sid + `'><message type='chat' to='bob@example.test' from='alice@example.test/Expresso'><composing xmlns='http://jabber.org/protocol/chatstates'/></message><message type='chat' to='bob@example.test' xmlns='jabber:client'><body>oi</body></message></body>`)
	}()
	select {
	case <-polled:
	case r := <-sendDone:
		t.Fatalf("the send was answered (%s) while the older poll was still held", r)
	}
	h.serverStanza(`<message from="bob@example.test/desk" type="chat" id="e1"><body>resposta</body></message>`)
	if r := <-sendDone; !strings.Contains(r, "<div class='body'>resposta</div>") {
		t.Fatalf("the held send's answer as the messenger reads it: %s", r)
	}
	sent = h.conn.stanzaLog()
	if len(sent) != 3 || strings.Contains(sent[1], "from=") || !strings.Contains(sent[2], "<body>oi</body>") {
		t.Fatalf("sent %q", sent)
	}
}

// heldCount is the number of held requests.
func (bs *boshSession) heldCount() int {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return len(bs.held)
}

// TestBOSHOrderAndLimits: requests that arrive out of order are processed
// in rid order; a retransmission racing its original sends nothing twice;
// more tabs than --max-browser-streams get 429; a request flood ends that
// stream only.
func TestBOSHOrderAndLimits(t *testing.T) {
	h, srv := boshHarness(t)
	c := h.tab(srv)
	body := func(rid int64, payload string) string {
		return `<body xmlns="http://jabber.org/protocol/httpbind" rid="` + strconv.FormatInt(rid, 10) + `" sid="` + c.SID + `">` + payload + `</body>`
	}
	msg := func(text string) string {
		return `<message xmlns="jabber:client" to="bob@example.test" type="chat"><body>` + text + `</body></message>`
	}
	// rid+2 first, then rid+1, then rid+2 again (a retransmission).
	second := make(chan int, 2)
	go func() { st, _ := c.Post(t.Context(), body(c.RID+2, msg("two"))); second <- st }()
	go func() { st, _ := c.Post(t.Context(), body(c.RID+2, msg("two"))); second <- st }()
	time.Sleep(50 * time.Millisecond) // both wait for rid+1
	if n := len(h.conn.stanzaLog()); n != 0 {
		t.Fatalf("a request was processed before the one before it: %q", h.conn.stanzaLog())
	}
	if st, _ := c.Post(t.Context(), body(c.RID+1, msg("one"))); st != http.StatusOK {
		t.Fatal(st)
	}
	<-second
	<-second
	c.RID += 2
	sent := h.conn.stanzaLog()
	if len(sent) != 2 || !strings.Contains(sent[0], "one") || !strings.Contains(sent[1], "two") {
		t.Fatalf("sent %q, want one then two, once each", sent)
	}

	// Tabs: up to --max-browser-streams (8) attached, then 429.
	for i := 1; i < h.api.cfg.MaxBrowserStreams; i++ {
		h.newBOSH(srv, goodID).Create("example.test")
	}
	extra := h.newBOSH(srv, goodID)
	if st, _ := extra.Post(t.Context(), `<body xmlns="http://jabber.org/protocol/httpbind" rid="9" to="example.test" wait="3" hold="1"/>`); st != http.StatusTooManyRequests {
		t.Fatalf("one tab too many: %d %s", st, extra.Last)
	}

	// A flood of requests (retransmissions, answered at once) ends that
	// stream.
	var last *boshBody
	for i := 0; i < 2*boshBurst && (last == nil || last.attrs["type"] != "terminate"); i++ {
		_, last = c.Post(t.Context(), body(c.RID, ""))
	}
	if last.attrs["type"] != "terminate" || !strings.Contains(c.Last, "policy-violation") {
		t.Fatalf("a request flood: %s", c.Last)
	}
}

func TestCheckPlain(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name, payload string
		ok            bool
	}{
		{"own login", b64("\x00alice\x00anything"), true},
		{"own JID as authcid", b64("\x00alice@example.test\x00x"), true},
		{"authzid own JID", b64("alice@example.test\x00alice\x00x"), true},
		{"empty identities", strings.TrimRight(b64("\x00\x00imsidecar"), "=") + "==", true},
		{"examples/expresso/auth_messenger.php's placeholder", strings.TrimSuffix(b64("alice@example.test\x00alice\x00imsidecar-session-cookie"), "==") + "==", true},
		{"Expresso's blob with its padding doubled", b64("alice@example.test\x00alice\x00pw") + "==", true},
		{"someone else", b64("\x00bob\x00bob-pw"), false},
		{"someone else as authzid", b64("bob@example.test\x00alice\x00x"), false},
		{"not base64", "!!!", false},
		{"two fields", b64("alice\x00x"), false},
		{"empty", "=", false},
	}
	for _, tt := range tests {
		if got := checkPlain(tt.payload, "alice", "alice@example.test"); got != tt.ok {
			t.Errorf("%s: checkPlain(%q) = %v, want %v", tt.name, tt.payload, got, tt.ok)
		}
	}
}

// TestBridgeCarbonsBetweenTabs: tabs share one resource, so the server
// would not copy to tab B what tab A sends; the bridge gives B (which asked
// for carbons) a XEP-0280 "sent" copy, and A none.
func TestBridgeCarbonsBetweenTabs(t *testing.T) {
	h, srv := boshHarness(t)
	a, b := h.tab(srv), h.tab(srv)
	b.Send("", `<iq xmlns="jabber:client" type="set" id="c"><enable xmlns="urn:xmpp:carbons:2"/></iq>`)
	a.Send("", `<message xmlns="jabber:client" to="bob@example.test" type="chat" id="t1"><body>de uma aba</body></message>`)
	a.Send("", `<message xmlns="jabber:client" to="bob@example.test" type="chat" id="t2"><body>privada</body><private xmlns="urn:xmpp:carbons:2"/></message>`)
	cc := b.WaitFor(5*time.Second, "the sent carbon", func(s string) bool { return strings.Contains(s, "de uma aba") })
	for _, want := range []string{`<sent xmlns="urn:xmpp:carbons:2">`, `from="alice@example.test"`, `id="t1"`, `from="` + h.conn.jid + `"`} {
		if !strings.Contains(cc, want) {
			t.Errorf("carbon %s lacks %s", cc, want)
		}
	}
	b.Send("", "")
	if n := b.Count(func(s string) bool { return strings.Contains(s, "privada") }); n != 0 {
		t.Error("a private message was copied")
	}
	if n := a.Count(func(s string) bool { return strings.Contains(s, "<sent") }); n != 0 {
		t.Error("the sender got a carbon of its own message")
	}
}

// metric scrapes the value of an unlabelled series.
func (h *harness) metric(name string) string {
	h.t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(h.api.metrics.reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	h.t.Fatalf("no series %s", name)
	return ""
}

// TestBOSHToken: with --api-token-file a page's cookie opens a stream only
// through the front that adds the token; a sid, once made, is enough.
func TestBOSHToken(t *testing.T) {
	h := newHarness(t, "s3cret-token")
	srv := httptest.NewServer(h.srv)
	t.Cleanup(srv.Close)
	create := `<body xmlns="http://jabber.org/protocol/httpbind" rid="5" to="example.test" wait="3" hold="1"/>`
	bare := h.newBOSH(srv, goodID)
	if st, _ := bare.Post(t.Context(), create); st != http.StatusUnauthorized {
		t.Fatalf("cookie without the token: %d %s", st, bare.Last)
	}
	c := h.newBOSH(srv, goodID)
	c.hdr.Set("Authorization", "Bearer s3cret-token")
	c.Create("example.test")
	c.hdr.Del("Authorization")
	c.Login("alice", "x")
	h.checkNoSecrets(c.SID, "s3cret-token")
}

// TestBridgeClientRooms: a room a page joined itself is, after a reload,
// joined again from what the bridge kept: the new page gets the occupants
// (itself last) and the subject, and the room hears nothing.
func TestBridgeClientRooms(t *testing.T) {
	h, srv := boshHarness(t)
	room := "sala@conference.example.test"
	a := h.newBOSH(srv, goodID)
	a.Create("example.test")
	jid := a.Login("alice", "x")
	a.Send("", `<presence xmlns="jabber:client"/>`)
	a.Send("", `<presence xmlns="jabber:client" to="`+room+`/Alice"><x xmlns="http://jabber.org/protocol/muc"/></presence>`)
	if sent := h.conn.stanzaLog(); len(sent) != 1 || !strings.Contains(sent[0], room+"/Alice") {
		t.Fatalf("the join went out as %q", sent)
	}
	h.serverStanza(`<presence from="` + room + `/Bob" to="` + jid + `"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="none" role="participant"/></x></presence>`)
	h.serverStanza(`<presence from="` + room + `/Carol" to="` + jid + `"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="none" role="participant"/></x></presence>`)
	h.serverStanza(`<presence from="` + room + `/Alice" to="` + jid + `"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="owner" role="moderator"/><status code="110"/></x></presence>`)
	h.serverStanza(`<message from="` + room + `" to="` + jid + `" type="groupchat"><subject>Pauta</subject></message>`)
	h.serverStanza(`<presence from="` + room + `/Carol" to="` + jid + `" type="unavailable"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="none" role="none"/></x></presence>`)
	a.WaitFor(5*time.Second, "the subject", func(s string) bool { return strings.Contains(s, "Pauta") })
	// The reload.
	b := h.tab(srv)
	b.Send("", `<presence xmlns="jabber:client"/>`)
	b.Send("", `<presence xmlns="jabber:client" to="`+room+`/Alice"><x xmlns="http://jabber.org/protocol/muc"/></presence>`)
	var got []string
	for len(got) < 3 {
		s := b.WaitFor(5*time.Second, "the room replayed", func(s string) bool { return strings.Contains(s, `from="`+room) })
		got = append(got, s)
	}
	if !strings.Contains(got[0], room+"/Bob") || !strings.Contains(got[1], `code="110"`) || !strings.Contains(got[2], "<subject>Pauta</subject>") {
		t.Fatalf("replayed %q, want Bob, then Alice (110), then the subject", got)
	}
	b.Send("", "")
	if n := b.Count(func(s string) bool { return strings.Contains(s, room+"/Carol") }); n != 0 {
		t.Fatal("an occupant that left was replayed")
	}
	if sent := h.conn.stanzaLog(); len(sent) != 1 {
		t.Fatalf("the second join reached the room: %q", sent)
	}
	// Leaving is passed on, and a later join goes to the room again.
	b.Send("", `<presence xmlns="jabber:client" to="`+room+`/Alice" type="unavailable"/>`)
	b.Send("", `<presence xmlns="jabber:client" to="`+room+`/Alice"><x xmlns="http://jabber.org/protocol/muc"/></presence>`)
	if sent := h.conn.stanzaLog(); len(sent) != 3 {
		t.Fatalf("leave and join again sent %q", sent)
	}
}

// TestBridgeClientRoomsAfterContinuityLost: a fresh stream is in none of
// the rooms the pages joined: they are told so (110, 332), and a page's
// next join goes to the room.
func TestBridgeClientRoomsAfterContinuityLost(t *testing.T) {
	h, srv := boshHarness(t)
	room := "sala@conference.example.test"
	a := h.newBOSH(srv, goodID)
	a.Create("example.test")
	jid := a.Login("alice", "x")
	join := `<presence xmlns="jabber:client" to="` + room + `/Alice"><x xmlns="http://jabber.org/protocol/muc"/></presence>`
	a.Send("", join)
	h.serverStanza(`<presence from="` + room + `/Alice" to="` + jid + `"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="owner" role="moderator"/><status code="110"/></x></presence>`)
	a.WaitFor(5*time.Second, "joined", func(s string) bool { return strings.Contains(s, room+"/Alice") })
	h.handler.HandleEvent(&xmppconn.StateChange{State: xmppconn.StateOnline, ContinuityLost: true})
	a.WaitFor(5*time.Second, "out of the room", func(s string) bool {
		return strings.Contains(s, room+"/Alice") && strings.Contains(s, `type="unavailable"`) && strings.Contains(s, `code="332"`)
	})
	a.Send("", join)
	if sent := h.conn.stanzaLog(); len(sent) != 2 {
		t.Fatalf("the join after a fresh stream did not reach the room: %q", sent)
	}
}

// tab is a page of alice's session, logged in over BOSH.
func (h *harness) tab(srv *httptest.Server) *BOSHClient {
	h.t.Helper()
	c := h.newBOSH(srv, goodID)
	c.Create("example.test")
	c.Login("alice", "x")
	return c
}

// TestBridgeArchiveIsolation: archive (XEP-0313) results go to the tab
// whose query asked for them, and only from the user's own archive; a
// contact (or another tab, through the server) forging them reaches no one.
func TestBridgeArchiveIsolation(t *testing.T) {
	h, srv := boshHarness(t)
	a, b := h.tab(srv), h.tab(srv)
	a.Send("", `<iq xmlns="jabber:client" type="set" id="mam1"><query xmlns="urn:xmpp:mam:2" queryid="q1"/></iq>`)
	result := func(from, text string) string {
		return `<message from="` + from + `" to="` + h.conn.jid + `"><result xmlns="urn:xmpp:mam:2" queryid="q1" id="x1"><forwarded xmlns="urn:xmpp:forward:0"><message xmlns="jabber:client" from="bob@example.test/d" to="alice@example.test" type="chat"><body>` + text + `</body></message></forwarded></result></message>`
	}
	h.serverStanza(result("alice@example.test", "arquivada"))
	h.serverStanza(result("bob@example.test/d", "forjada por contato"))
	h.serverStanza(result(h.conn.jid, "forjada por outra aba"))
	a.WaitFor(5*time.Second, "the archived message", func(s string) bool { return strings.Contains(s, "arquivada") })
	a.Send("", "")
	b.Send("", "")
	for _, c := range []*BOSHClient{a, b} {
		if n := c.Count(func(s string) bool { return strings.Contains(s, "forjada") || strings.Contains(s, "arquivada") }); n != 0 {
			t.Fatalf("a forged or someone else's archive result arrived: %q", c.Got)
		}
	}
}

// TestBOSHExpressoAfterLogin covers what Expresso 2.5's messenger needs
// after login (docs/EXPRESSO.md; examples/expresso runs the real-browser
// stand-in): <show>null</show> is plain available and does not end the
// client; what waited while no page was attached comes after the bind and
// session answers, which the messenger never reads; and a dead sid gets an
// HTTP error, the only end the messenger notices.
func TestBOSHExpressoAfterLogin(t *testing.T) {
	h, srv := boshHarness(t)
	first := h.newBOSH(srv, goodID)
	first.Create("example.test")
	first.Login("alice", "x")
	first.Send("", `<presence xmlns="jabber:client"><show>away</show></presence>`)

	first.Send("", `<presence xmlns="jabber:client"><show>null</show></presence>`)
	if strings.Contains(first.Last, "terminate") {
		t.Fatalf("<show>null</show> ended the client: %s", first.Last)
	}
	if p := h.conn.Presence(); p.Show != xmppconn.ShowAvailable || p.Type == "unavailable" {
		t.Fatalf("after <show>null</show> the user's presence is %+v, want available", p)
	}

	// The page goes away; a message comes; a new page logs in.
	first.Send(`type="terminate"`, `<presence xmlns="jabber:client" type="unavailable"/>`)
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="w1"><body>while away</body></message>`)
	second := h.newBOSH(srv, goodID)
	second.Create("example.test")
	plain := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00x"))
	second.Send("", `<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">`+plain+`</auth>`)
	second.Send(`xmpp:restart="true"`, "")
	for _, iq := range []string{
		`<iq xmlns="jabber:client" type="set" id="b"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></iq>`,
		`<iq xmlns="jabber:client" type="set" id="s"><session xmlns="urn:ietf:params:xml:ns:xmpp-session"/></iq>`,
	} {
		if second.Send("", iq); strings.Contains(second.Last, "while away") {
			t.Fatalf("the kept message came in the answer to %s: %s", iq, second.Last)
		}
	}
	second.WaitFor(5*time.Second, "the kept message, after bind and session", func(s string) bool { return strings.Contains(s, "while away") })

	// A dead sid: HTTP 404 as well as the terminate.
	dead := h.newBOSH(srv, goodID)
	dead.SID, dead.RID = "0123456789abcdef0123456789abcdef01234567", 100
	if st, _ := dead.Post(t.Context(), `<body xmlns="http://jabber.org/protocol/httpbind" rid="101" sid="`+dead.SID+`"/>`); st != http.StatusNotFound || !strings.Contains(dead.Last, `condition="item-not-found"`) {
		t.Fatalf("a dead sid: HTTP %d %s", st, dead.Last)
	}
}

// TestLoginOutlivesItsRequest: the login a browser's BOSH session
// creation or WebSocket upgrade, or a PHP prebind, starts is the registry's, not the request's. A client that
// gives up while the Jabber server is slow does not cut the login; its
// next request finds it done, with no second login. A client can thus
// not make the daemon log its user in over and over by giving up.
func TestLoginOutlivesItsRequest(t *testing.T) {
	create := `<body xmlns="http://jabber.org/protocol/httpbind" xmlns:xmpp="urn:xmpp:xbosh" content="text/xml; charset=utf-8" hold="1" rid="1000" to="example.test" ver="1.6" wait="3" xmpp:version="1.0"/>`
	for _, tc := range []struct {
		name string
		req  func(ctx context.Context, url string) *http.Request
		next func(t *testing.T, h *harness, srv *httptest.Server)
	}{
		{"bosh creation", func(ctx context.Context, url string) *http.Request {
			req, _ := http.NewRequestWithContext(ctx, "POST", url+"/http-bind", strings.NewReader(create))
			req.Header.Set("Cookie", "sessionid="+goodID)
			req.Header.Set("Origin", url)
			return req
		}, func(t *testing.T, h *harness, srv *httptest.Server) {
			if b := h.newBOSH(srv, goodID).Create("example.test"); b.attrs["sid"] == "" {
				t.Fatalf("the next creation: %+v", b.attrs)
			}
		}},
		{"websocket upgrade", func(ctx context.Context, url string) *http.Request {
			req, _ := http.NewRequestWithContext(ctx, "GET", url+"/xmpp-websocket", nil)
			req.Header.Set("Cookie", "sessionid="+goodID)
			req.Header.Set("Origin", url)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			req.Header.Set("Sec-WebSocket-Protocol", "xmpp")
			return req
		}, func(t *testing.T, h *harness, srv *httptest.Server) {
			c, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/xmpp-websocket", &websocket.DialOptions{
				Subprotocols: []string{"xmpp"}, HTTPHeader: http.Header{"Origin": {srv.URL}, "Cookie": {"sessionid=" + goodID}}})
			if err != nil {
				t.Fatalf("the next upgrade: %v", err)
			}
			c.CloseNow()
		}},
		{"prebind", func(ctx context.Context, url string) *http.Request {
			req, _ := http.NewRequestWithContext(ctx, "POST", url+"/v1/prebind", nil)
			req.Header.Set("X-Session-Id", goodID)
			return req
		}, func(t *testing.T, h *harness, srv *httptest.Server) {
			if rec := h.do("POST", "/v1/prebind", "", "X-Session-Id", goodID); rec.Code != http.StatusOK {
				t.Fatalf("the next prebind: %d %s", rec.Code, rec.Body)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, srv := boshHarnessUnparked(t)
			started, release := h.holdLogins()
			// Three requests give up: the first while its login runs,
			// the others while they wait for it.
			var loginCtx context.Context
			for i := range 3 {
				ctx, cancel := context.WithCancel(t.Context())
				done := make(chan error, 1)
				go func() {
					resp, err := http.DefaultClient.Do(tc.req(ctx, srv.URL))
					if err == nil {
						resp.Body.Close()
					}
					done <- err
				}()
				if i == 0 {
					select {
					case loginCtx = <-started:
					case <-time.After(5 * time.Second):
						t.Fatal("the request started no login")
					}
				} else {
					time.Sleep(20 * time.Millisecond) // waiting on the login in flight
				}
				cancel()
				if err := <-done; err == nil {
					t.Fatalf("request %d answered though its client gave up", i)
				}
			}
			time.Sleep(50 * time.Millisecond) // the server has seen the requests end
			wantOneLoginRunning(t, loginCtx, started, "request")
			close(release)
			tc.next(t, h, srv)
			if h.dials != 1 {
				t.Errorf("%d logins, want 1", h.dials)
			}
		})
	}
}
