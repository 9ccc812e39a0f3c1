package sidecar

import (
	"context"
	"encoding/base64"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsTestClient is an RFC 7395 client for the unit tests.
type wsTestClient struct {
	t     *testing.T
	ws    *websocket.Conn
	pings atomic.Int32 // pings received (and answered)
}

func (h *harness) dialWS(t *testing.T, url string, hdr http.Header, protos ...string) (*wsTestClient, *http.Response, error) {
	c := &wsTestClient{t: t}
	ws, resp, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(url, "http")+"/xmpp-websocket",
		&websocket.DialOptions{Subprotocols: protos, HTTPHeader: hdr, OnPingReceived: func(context.Context, []byte) bool {
			c.pings.Add(1)
			return true
		}})
	if err != nil {
		return nil, resp, err
	}
	t.Cleanup(func() { ws.CloseNow() })
	c.ws = ws
	return c, resp, nil
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
	for name, start := range map[string]func(testing.TB) (*harness, *httptest.Server){"adopted": boshHarness, "in-handler": boshHarnessUnparked} {
		t.Run(name, func(t *testing.T) { testWebSocketHostile(t, start) })
	}
}

func testWebSocketHostile(t *testing.T, start func(testing.TB) (*harness, *httptest.Server)) {
	h, srv := start(t)
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

// TestWebSocketSingleNodeNoAckPing: on a single node nothing is kept in
// Redis, so no ping follows what a WebSocket writes (wsack.go): the
// browser sees only the keepalive's, every wsPing, as before cluster
// mode's acknowledgement. A ping sent after a frame would reach the
// client before the next frame.
func TestWebSocketSingleNodeNoAckPing(t *testing.T) {
	h, srv := boshHarness(t)
	hdr := http.Header{"Origin": {srv.URL}, "Cookie": {"sessionid=" + goodID}}
	c, _, err := h.dialWS(t, srv.URL, hdr, "xmpp")
	if err != nil {
		t.Fatal(err)
	}
	c.login("example.test")
	for i := range 4 {
		body := "uma-" + strconv.Itoa(i)
		h.serverStanza(`<message from="bob@example.test/d" type="chat" id="s` + strconv.Itoa(i) + `"><body>` + body + `</body></message>`)
		c.until(body)
	}
	if n := c.pings.Load(); n != 0 {
		t.Fatalf("a single node pinged the browser %d times after writing stanzas", n)
	}
}

// TestWebSocketFirstFrameWithUpgrade: a client that sends its first
// frame in the same packet as the upgrade request loses nothing when the
// stream moves onto its own small buffers (wsSmallBuffers), and the
// shutdown ends the stream it adopted with system-shutdown.
func TestWebSocketFirstFrameWithUpgrade(t *testing.T) {
	h, srv := boshHarness(t)
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	open := []byte(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="example.test" version="1.0"/>`)
	// A masked text frame with a zero mask: the payload as it is.
	frame := append([]byte{0x81, 0x80 | byte(len(open)), 0, 0, 0, 0}, open...)
	req := "GET /xmpp-websocket HTTP/1.1\r\nHost: " + srv.Listener.Addr().String() + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n" +
		"Origin: " + srv.URL + "\r\nCookie: sessionid=" + goodID + "\r\n\r\n"
	if _, err := conn.Write(append([]byte(req), frame...)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	for !strings.Contains(string(got), "<mechanism>PLAIN</mechanism>") {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read: %v after %q", err, got)
		}
		got = append(got, buf[:n]...)
	}
	if !strings.HasPrefix(string(got), "HTTP/1.1 101 ") {
		t.Fatalf("upgrade answered %q", got)
	}
	// The shutdown ends the stream with system-shutdown and a close.
	h.api.draining.Store(true)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	go func() { // the client's part of the close handshake: read on
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			h.logMu.Lock()
			got = append(got, buf[:n]...)
			h.logMu.Unlock()
		}
	}()
	h.api.parked.shutdown(ctx)
	h.logMu.Lock()
	defer h.logMu.Unlock()
	if !strings.Contains(string(got), "system-shutdown") || !strings.Contains(string(got), "<close ") {
		t.Fatalf("shutdown: %q", got)
	}
}
