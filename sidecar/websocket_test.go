package sidecar

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsTestClient is an RFC 7395 client for the unit tests.
type wsTestClient struct {
	t  *testing.T
	ws *websocket.Conn
}

func (h *harness) dialWS(t *testing.T, url string, hdr http.Header, protos ...string) (*wsTestClient, *http.Response, error) {
	ws, resp, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(url, "http")+"/xmpp-websocket",
		&websocket.DialOptions{Subprotocols: protos, HTTPHeader: hdr})
	if err != nil {
		return nil, resp, err
	}
	t.Cleanup(func() { ws.CloseNow() })
	return &wsTestClient{t: t, ws: ws}, resp, nil
}

func (c *wsTestClient) send(s string) {
	c.t.Helper()
	if err := c.ws.Write(c.t.Context(), websocket.MessageText, []byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read returns the next frame, or "" once the connection is closed.
func (c *wsTestClient) read() string {
	c.t.Helper()
	_, data, err := c.ws.Read(c.t.Context())
	if err != nil {
		return ""
	}
	return string(data)
}

// until reads frames until one contains want; it fails if the stream ends.
func (c *wsTestClient) until(want string) string {
	c.t.Helper()
	for {
		s := c.read()
		if s == "" {
			c.t.Fatalf("closed waiting for %q", want)
		}
		if strings.Contains(s, want) {
			return s
		}
	}
}

// untilClosed reads frames until the connection closes and returns them.
func (c *wsTestClient) untilClosed() string {
	c.t.Helper()
	var all strings.Builder
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		s := c.read()
		if s == "" {
			return all.String()
		}
		all.WriteString(s)
	}
	c.t.Fatal("the stream did not close")
	return ""
}

func (c *wsTestClient) login(domain string) {
	c.t.Helper()
	c.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="` + domain + `" version="1.0"/>`)
	c.until("<mechanism>PLAIN</mechanism>")
	c.send(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">` + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00x")) + `</auth>`)
	c.until("<success")
	c.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="` + domain + `" version="1.0"/>`)
	c.until("xmpp-bind")
	c.send(`<iq xmlns="jabber:client" type="set" id="b"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></iq>`)
	c.until("<jid>")
}

// TestWebSocketHostile: what RFC 7395 clients must not do ends that
// client's stream only; the handshake refuses a foreign Origin, no
// cookie, and a client that does not speak the xmpp subprotocol.
func TestWebSocketHostile(t *testing.T) {
	h, srv := boshHarness(t)
	hdr := func(origin, cookie string) http.Header {
		x := http.Header{}
		x.Set("Origin", origin)
		if cookie != "" {
			x.Set("Cookie", "sessionid="+cookie)
		}
		return x
	}
	if _, resp, err := h.dialWS(t, srv.URL, hdr("https://evil.example", goodID), "xmpp"); err == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign Origin: %v %v", resp, err)
	}
	if _, resp, err := h.dialWS(t, srv.URL, hdr(srv.URL, ""), "xmpp"); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no cookie: %v %v", resp, err)
	}
	if c, _, err := h.dialWS(t, srv.URL, hdr(srv.URL, goodID)); err == nil {
		if s := c.untilClosed(); s != "" {
			t.Fatalf("no xmpp subprotocol got %q", s)
		}
		if st := websocket.CloseStatus(c.ws.Ping(t.Context())); st != -1 && st != websocket.StatusProtocolError {
			t.Fatalf("no subprotocol closed with %v", st)
		}
	}
	// The good client, which must outlive the bad ones.
	good, _, err := h.dialWS(t, srv.URL, hdr(srv.URL, goodID), "xmpp")
	if err != nil {
		t.Fatal(err)
	}
	good.login("example.test")
	for name, frame := range map[string]string{
		"stream-level element":    `<enable xmlns="urn:xmpp:sm:3"/>`,
		"malformed":               `<message><body>x</message>`,
		"oversized stanza":        `<message xmlns="jabber:client" to="bob@example.test"><body>` + strings.Repeat("x", maxClientStanza) + `</body></message>`,
		"a stanza before auth":    "",
		"two elements in a frame": `<presence xmlns="jabber:client"/><presence xmlns="jabber:client"/>`,
		"a comment":               `<message xmlns="jabber:client"><!-- x --></message>`,
	} {
		bad, _, err := h.dialWS(t, srv.URL, hdr(srv.URL, goodID), "xmpp")
		if err != nil {
			t.Fatal(err)
		}
		if frame == "" {
			bad.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="example.test" version="1.0"/>`)
			bad.until("PLAIN")
			bad.send(`<message xmlns="jabber:client" to="bob@example.test"><body>sem login</body></message>`)
		} else {
			bad.login("example.test")
			bad.send(frame)
		}
		rest := bad.untilClosed()
		if !strings.Contains(rest, "<stream:error") || !strings.Contains(rest, "<close") {
			t.Errorf("%s: the client's stream ended with %q, want a stream error and <close/>", name, rest)
		}
	}
	if n := len(h.conn.stanzaLog()); n != 0 {
		t.Fatalf("a bad client's stanza reached the server: %q", h.conn.stanzaLog())
	}
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="w1"><body>ainda aqui</body></message>`)
	good.until("ainda aqui")
	// A binary frame ends the client too.
	good.ws.Write(t.Context(), websocket.MessageBinary, []byte("<presence/>"))
	if rest := good.untilClosed(); !strings.Contains(rest, "policy-violation") {
		t.Fatalf("a binary frame: %q", rest)
	}
}
