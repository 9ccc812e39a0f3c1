package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
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
// browserHandler). Once upgraded, the stream is the parker's (wsStream):
// the handler returns, so net/http's goroutine, buffers and request
// objects go, and the stream runs on its reader goroutine with small
// buffers of its own (wsSmallBuffers). Without a parker (tests) it runs
// in the handler.
func (a *api) websocket(w http.ResponseWriter, r *http.Request) (string, error) {
	s, err := a.browserSession(r)
	if err != nil {
		return "", err
	}
	b := s.bridgeOf(a.cfg.MaxBrowserStreams, a.cfg.EventBuffer, a.metrics)
	t := &wsStream{a: a, s: s, endDone: make(chan struct{})}
	c, err := b.attach(t.kick)
	if err != nil {
		return s.user, err
	}
	pk := a.parked
	var rw http.ResponseWriter = w
	if pk != nil {
		rw = wsSmallBuffers{w}
	}
	ws, err := websocket.Accept(rw, r, &websocket.AcceptOptions{
		Subprotocols: []string{"xmpp"},
		// The Origin was checked by browserHandler, against
		// --allowed-origins.
		InsecureSkipVerify: true,
	})
	if err != nil {
		b.detach(c)
		return s.user, nil // Accept answered the client
	}
	if ws.Subprotocol() != "xmpp" {
		ws.Close(websocket.StatusProtocolError, "the xmpp subprotocol is required")
		b.detach(c)
		return s.user, nil
	}
	ws.SetReadLimit(maxClientStanza + 1024)
	t.c, t.ws = c, ws
	if rec, ok := w.(*statusRecorder); ok && pk != nil {
		ctx, cancel := context.WithCancel(context.Background())
		t.cancel = cancel
		if pk.adopt(t) {
			start := rec.start
			go func() { // owned by the parker: its shutdown ends it
				defer pk.release(t)
				t.run(ctx)
				b.detach(c)
				a.record(context.Background(), "websocket", http.StatusSwitchingProtocols, start, s.user)
			}()
			return s.user, errParked
		}
		cancel()
	}
	defer b.detach(c)
	t.run(r.Context())
	return s.user, nil
}

// wsSmallBuffers hands coder/websocket the hijacked connection with
// buffers of wsReadBuffer and wsWriteBuffer bytes instead of net/http's
// 4 KB ones, which go with the handler: a stanza is a few hundred bytes,
// and larger reads and writes bypass a bufio buffer.
type wsSmallBuffers struct{ http.ResponseWriter }

const wsReadBuffer, wsWriteBuffer = 512, 1024

func (w wsSmallBuffers) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w wsSmallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, wsReadBuffer)
	if n := brw.Reader.Buffered(); n > 0 {
		// What the client sent past the request, buffered in the new
		// reader (coder/websocket takes the buffered bytes and resets
		// the reader onto the connection).
		b, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn), max(wsReadBuffer, n))
		br.Peek(n)
	}
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(conn, wsWriteBuffer)), nil
}

// wsStream is one browser WebSocket. A reader goroutine reads its frames;
// what the bridge queues for it is written by a goroutine started when
// there is something to write (kick), which ends once the queue is empty.
type wsStream struct {
	a       *api
	s       *session
	c       *bridgeClient
	ws      *websocket.Conn
	cancel  context.CancelFunc // ends a stream the parker owns
	endDone chan struct{}      // closed once the end is written

	mu       sync.Mutex
	started  bool // run began: kicks write
	writing  bool // a writer goroutine runs
	again    bool // kicked while it ran
	finished bool // the end was written
	stopRead context.CancelFunc
	ping     *time.Timer
	// In cluster mode what the stream writes stays in Redis until a
	// ping sent after it is answered (wsack.go): written is the highest
	// stanza number written, ponged the highest a pong acknowledged,
	// pinging that a ping is out (one at a time), acks the goroutine
	// that sends the pings after a write.
	written, ponged uint64
	pinging         bool
	acks            sync.WaitGroup
}

// run reads frames until the browser closes or the client is cut off;
// the writer sends what the bridge queues and ends the stream (a stream
// error and <close/>) when the client is cut off or ctx ends (shutdown).
// Pings go every wsPing. Reads are not bound to ctx: coder/websocket
// closes the connection when a read's context ends, before the end could
// be said.
func (t *wsStream) run(ctx context.Context) {
	rctx, stopReading := context.WithCancel(context.Background())
	defer stopReading()
	stopCtx := context.AfterFunc(ctx, func() {
		if t.a.draining.Load() {
			t.c.end("system-shutdown", "shutdown")
		} else {
			t.c.end("", "")
		}
	})
	defer stopCtx()
	t.mu.Lock()
	t.started, t.stopRead = true, stopReading
	t.ping = time.AfterFunc(wsPing, t.pingNow)
	t.mu.Unlock()
	t.kick()
	if err := t.reader(rctx); err != nil && !errors.Is(err, context.Canceled) {
		t.c.end("policy-violation", "")
	} else {
		t.c.end("", "")
	}
	t.kick()
	<-t.endDone
	t.mu.Lock()
	t.ping.Stop()
	t.mu.Unlock()
	t.ws.CloseNow()
	t.acks.Wait() // its ping fails at once on the closed connection
}

// kick has the queue written: it starts the writer, or has the running
// one look again. It never blocks (the bridge calls it under its lock).
func (t *wsStream) kick() {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case !t.started || t.finished:
	case t.writing:
		t.again = true
	default:
		t.writing = true
		go t.writer() // ends when the queue is empty or the stream ends
	}
}

// writer sends queued stanzas, one per message, and the end.
func (t *wsStream) writer() {
	for {
		if ended, cond, text := t.c.ending(); ended {
			t.writeEnd(cond, text)
			return
		}
		list, top := t.c.takeUnacked(boshMaxResponse)
		for _, raw := range list {
			if !t.write(raw) {
				t.c.end("", "")
				top = 0
				break
			}
		}
		t.wrote(top)
		t.mu.Lock()
		if !t.again && !t.c.pending() {
			t.writing = false
			t.mu.Unlock()
			return
		}
		t.again = false
		t.mu.Unlock()
	}
}

// writeEnd says why the stream ends, closes it and stops the reader.
func (t *wsStream) writeEnd(cond, text string) {
	wctx, cancel := context.WithTimeout(context.Background(), wsWriteTimeout)
	if cond != "" {
		t.ws.Write(wctx, websocket.MessageText, []byte(`<stream:error xmlns:stream="http://etherx.jabber.org/streams">`+strings.TrimPrefix(streamErrorXML(cond, text), "<stream:error>")))
	}
	t.ws.Write(wctx, websocket.MessageText, []byte(`<close xmlns="`+nsFraming+`"/>`))
	cancel()
	t.ws.Close(websocket.StatusNormalClosure, "")
	t.mu.Lock()
	t.finished = true
	t.stopRead()
	t.mu.Unlock()
	close(t.endDone)
}

// pingNow pings the browser (on the timer's goroutine); its pong keeps
// the user's stream from the inactivity rule. When a ping is out already
// (wsack.go), its pong tells the same.
func (t *wsStream) pingNow() {
	t.mu.Lock()
	if t.finished {
		t.mu.Unlock()
		return
	}
	if t.pinging {
		t.ping.Reset(wsPing)
		t.mu.Unlock()
		return
	}
	t.pinging = true
	t.mu.Unlock()
	if !t.pingUntilAcked() {
		return
	}
	t.mu.Lock()
	if !t.finished {
		t.ping.Reset(wsPing)
	}
	t.mu.Unlock()
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
