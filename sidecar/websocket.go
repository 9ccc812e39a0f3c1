package sidecar

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// XMPP over WebSocket (RFC 7395) at /xmpp-websocket: a browser's stream,
// attached to its PHP session's XMPP stream through the bridge.

const (
	nsFraming = "urn:ietf:params:xml:ns:xmpp-framing"
	// wsPing is how often an idle WebSocket is pinged; its pong keeps
	// the user's stream from the inactivity rule.
	wsPing = 30 * time.Second
	// wsWriteTimeout bounds one write to the browser.
	wsWriteTimeout = 10 * time.Second
	// wsRate and wsBurst bound the frames per second of one WebSocket.
	wsRate, wsBurst = 20, 60
)

// websocket serves a request to /xmpp-websocket (through
// browserHandler).
func (a *api) websocket(w http.ResponseWriter, r *http.Request) (string, error) {
	s, err := a.browserSession(r)
	if err != nil {
		return "", err
	}
	b := s.bridgeOf(a.cfg.MaxBrowserStreams, a.cfg.EventBuffer, a.metrics)
	wake := make(chan struct{}, 1)
	c, err := b.attach(func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return s.user, err
	}
	defer b.detach(c)
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: []string{"xmpp"},
		// The Origin was checked by browserHandler, against
		// --allowed-origins.
		InsecureSkipVerify: true,
	})
	if err != nil {
		return s.user, nil // Accept answered the client
	}
	if ws.Subprotocol() != "xmpp" {
		ws.Close(websocket.StatusProtocolError, "the xmpp subprotocol is required")
		return s.user, nil
	}
	ws.SetReadLimit(maxClientStanza + 1024)
	(&wsStream{a: a, s: s, c: c, ws: ws, wake: wake}).run(r.Context())
	return s.user, nil
}

// wsStream is one browser WebSocket.
type wsStream struct {
	a    *api
	s    *session
	c    *bridgeClient
	ws   *websocket.Conn
	wake chan struct{}
}

// run reads frames until the browser closes or the client is cut off; a
// writer goroutine, which run waits for, sends what the bridge queues,
// pings, and ends the stream (a stream error and <close/>) when the
// client is cut off or the request's context ends (shutdown). Reads are
// not bound to the request's context: coder/websocket closes the
// connection when a read's context ends, before the end could be said.
func (t *wsStream) run(ctx context.Context) {
	rctx, stopReading := context.WithCancel(context.Background())
	defer stopReading()
	done := make(chan struct{})
	go func() {
		defer close(done)
		t.writer(ctx)
		stopReading()
	}()
	if err := t.reader(rctx); err != nil && !errors.Is(err, context.Canceled) {
		t.c.end("policy-violation", "")
	} else {
		t.c.end("", "")
	}
	t.kick()
	<-done
	t.ws.CloseNow()
}

func (t *wsStream) kick() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// writer sends queued stanzas, one per message, and the end.
func (t *wsStream) writer(ctx context.Context) {
	ping := time.NewTicker(wsPing)
	defer ping.Stop()
	for {
		if ended, cond, text := t.c.ending(); ended {
			wctx, cancel := context.WithTimeout(context.Background(), wsWriteTimeout)
			if cond != "" {
				t.ws.Write(wctx, websocket.MessageText, []byte(`<stream:error xmlns:stream="http://etherx.jabber.org/streams">`+strings.TrimPrefix(streamErrorXML(cond, text), "<stream:error>")))
			}
			t.ws.Write(wctx, websocket.MessageText, []byte(`<close xmlns="`+nsFraming+`"/>`))
			cancel()
			t.ws.Close(websocket.StatusNormalClosure, "")
			return
		}
		for _, raw := range t.c.take(boshMaxResponse) {
			if !t.write(raw) {
				t.c.end("", "")
				break
			}
		}
		select {
		case <-t.wake:
		case <-ping.C:
			pctx, cancel := context.WithTimeout(ctx, wsWriteTimeout)
			err := t.ws.Ping(pctx)
			cancel()
			if err != nil {
				t.c.end("", "")
				continue
			}
			t.s.lastPoll.Store(time.Now().UnixNano())
		case <-ctx.Done():
			if t.a.draining.Load() {
				t.c.end("system-shutdown", "shutdown")
			} else {
				t.c.end("", "")
			}
		}
	}
}

func (t *wsStream) write(raw []byte) bool {
	ctx, cancel := context.WithTimeout(context.Background(), wsWriteTimeout)
	defer cancel()
	return t.ws.Write(ctx, websocket.MessageText, raw) == nil
}

// reader handles the browser's frames: the stream opening and SASL, then
// stanzas; it returns when the stream ends.
func (t *wsStream) reader(ctx context.Context) error {
	authed, bound := false, false
	fails := 0
	limiter := tokenBucket{rate: wsRate, burst: wsBurst}
	for {
		typ, data, err := t.ws.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusMessageTooBig {
				return err
			}
			return nil // the browser went away or closed: detach
		}
		if ended, _, _ := t.c.ending(); ended {
			return nil
		}
		if typ != websocket.MessageText || !limiter.allow(time.Now()) {
			return errClientBadStanza
		}
		t.s.lastPoll.Store(time.Now().UnixNano())
		name, attrs, err := firstElement(data)
		if err != nil {
			return errClientBadStanza
		}
		switch {
		case name.Space == nsFraming && name.Local == "open":
			if to := attrs["to"]; to != "" && to != t.a.cfg.XMPPDomain {
				t.c.end("host-unknown", "")
				return nil
			}
			if authed {
				bound = true
			}
			open := `<open xmlns="` + nsFraming + `" from="` + xmlEsc(t.a.cfg.XMPPDomain) + `" id="` + newSID()[:16] + `" version="1.0" xml:lang="en"/>`
			feats := strings.Replace(streamFeatures(authed), "<stream:features>", `<stream:features xmlns:stream="http://etherx.jabber.org/streams">`, 1)
			if !t.write([]byte(open)) || !t.write([]byte(feats)) {
				return nil
			}
		case name.Space == nsFraming && name.Local == "close":
			return nil // the writer answers <close/>
		case name.Space == nsSASL && name.Local == "auth" && !authed:
			if checkAuth(data, t.s.user, t.s.jid) {
				authed = true
				if !t.write([]byte(`<success xmlns="` + nsSASL + `"/>`)) {
					return nil
				}
				continue
			}
			fails++
			if fails >= 3 {
				t.c.end("not-authorized", "")
				return nil
			}
			if !t.write([]byte(`<failure xmlns="` + nsSASL + `"><not-authorized/></failure>`)) {
				return nil
			}
		case !bound:
			t.c.end("not-authorized", "")
			return nil
		default:
			if err := t.c.b.fromClient(ctx, t.c, data); err != nil {
				if errors.Is(err, errClientBadStanza) {
					t.c.end("policy-violation", "")
				} else {
					t.c.end("remote-connection-failed", "")
				}
				return nil
			}
		}
	}
}

// firstElement returns the name and unqualified attributes of the first
// element of a frame.
func firstElement(data []byte) (xml.Name, map[string]string, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	for {
		tok, err := d.Token()
		if err != nil {
			return xml.Name{}, nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			attrs := map[string]string{}
			for _, a := range t.Attr {
				if a.Name.Space == "" {
					attrs[a.Name.Local] = a.Value
				}
			}
			return t.Name, attrs, nil
		case xml.ProcInst, xml.Directive, xml.Comment:
			return xml.Name{}, nil, errClientBadStanza
		}
	}
}
