package xmppconntest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// FakeOptions configures a FakeServer.
type FakeOptions struct {
	// Domain is the served domain; default DefaultDomain.
	Domain string
	// NoStartTLS offers no STARTTLS (and then PLAIN in the clear).
	NoStartTLS bool
	// Users maps localparts to passwords; nil accepts any user with
	// password "secret".
	Users map[string]string
	// ByteAtATime writes every byte the server sends in its own write
	// (its own TLS record once encrypted), so the client's reads split
	// tags and even UTF-8 sequences.
	ByteAtATime bool
	// StreamManagement offers XEP-0198: <enable/> is accepted (resumption
	// is always refused), <r/> is answered with the number of stanzas
	// received since, and <a/> from the client is delivered on In.
	StreamManagement bool
	// NoAutoReply stops the server from answering the client's IQ get/set
	// requests after binding; they are then only delivered on FakeConn.In.
	NoAutoReply bool
	// AuthFailure, if set, is the SASL failure condition every PLAIN
	// <auth/> is answered with, whatever the credentials, e.g.
	// "temporary-auth-failure".
	AuthFailure string
}

// FakeServer is a scripted in-process XMPP server on a loopback port for
// protocol edge cases real servers can't be made to produce. It implements
// just enough of RFC 6120 for a client to log in: STARTTLS with the test
// certificate, SASL PLAIN, resource binding, and empty answers to the
// client's IQs (roster, carbons, session). Once a client is bound, its
// connection is delivered on Conns() and the test scripts the rest.
type FakeServer struct {
	Addr   string
	Domain string
	Certs  *CertBundle

	opts     FakeOptions
	ln       net.Listener
	tlsCfg   *tls.Config
	conns    chan *FakeConn
	auths    atomic.Int64
	accepted atomic.Int64

	mu   sync.Mutex
	live map[*FakeConn]struct{}
	wg   sync.WaitGroup
}

// StartFakeServer listens on a random loopback port; tb.Cleanup closes it
// and every connection.
func StartFakeServer(tb testing.TB, opts FakeOptions) *FakeServer {
	tb.Helper()
	if opts.Domain == "" {
		opts.Domain = DefaultDomain
	}
	certs, err := NewCertBundle(tb.TempDir(), opts.Domain, "localhost")
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certs.CertPEM, certs.KeyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &FakeServer{
		Addr:   ln.Addr().String(),
		Domain: opts.Domain,
		Certs:  certs,
		opts:   opts,
		ln:     ln,
		tlsCfg: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		conns:  make(chan *FakeConn, 16),
		live:   make(map[*FakeConn]struct{}),
	}
	s.wg.Add(1)
	go s.acceptLoop(tb)
	tb.Cleanup(s.Close)
	return s
}

// TLSConfig returns a client configuration trusting the fake server.
func (s *FakeServer) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: s.Certs.CAPool, ServerName: s.Domain, MinVersion: tls.VersionTLS12}
}

// Conns delivers each client connection once it has bound a resource.
func (s *FakeServer) Conns() <-chan *FakeConn { return s.conns }

// AuthAttempts is the number of SASL <auth/> elements received so far.
func (s *FakeServer) AuthAttempts() int { return int(s.auths.Load()) }

// Accepted is the number of TCP connections accepted so far.
func (s *FakeServer) Accepted() int { return int(s.accepted.Load()) }

// Close stops listening, closes every connection and waits for their
// goroutines.
func (s *FakeServer) Close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.live {
		c.raw.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *FakeServer) acceptLoop(tb testing.TB) {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		c := &FakeConn{srv: s, raw: nc, conn: nc, In: make(chan Element, 256), closed: make(chan struct{})}
		c.noAutoReply.Store(s.opts.NoAutoReply)
		s.mu.Lock()
		s.live[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			err := c.serve()
			c.err = err
			close(c.closed)
			close(c.In)
			nc.Close()
			s.mu.Lock()
			delete(s.live, c)
			s.mu.Unlock()
		}()
	}
}

// Element is one top-level element the client sent.
type Element struct {
	XMLName xml.Name
	Attrs   []xml.Attr `xml:",any,attr"`
	Inner   string     `xml:",innerxml"`
}

// Attr returns the value of the attribute with the given local name.
func (e Element) Attr(local string) string {
	for _, a := range e.Attrs {
		if a.Name.Local == local {
			return a.Value
		}
	}
	return ""
}

// String renders the element for failure messages.
func (e Element) String() string {
	var b strings.Builder
	b.WriteString("<" + e.XMLName.Local)
	for _, a := range e.Attrs {
		fmt.Fprintf(&b, " %s=%q", a.Name.Local, a.Value)
	}
	b.WriteString(">" + e.Inner + "</" + e.XMLName.Local + ">")
	return b.String()
}

// FakeConn is the server side of one client connection.
type FakeConn struct {
	// In receives every top-level element the client sends after binding,
	// including IQs the server auto-answered; closed when the connection
	// ends.
	In chan Element
	// JID is the full JID bound for the client.
	JID string

	srv          *FakeServer
	raw          net.Conn // the TCP connection
	conn         net.Conn // raw, or the TLS layer over it
	br           *bufio.Reader
	dec          *xml.Decoder
	wmu          sync.Mutex
	closed       chan struct{}
	err          error
	streamClosed atomic.Bool
	noAutoReply  atomic.Bool
}

// SetAutoReply turns the automatic empty answers to the client's IQ
// get/set requests on or off (FakeOptions.NoAutoReply is the initial value).
func (c *FakeConn) SetAutoReply(on bool) { c.noAutoReply.Store(!on) }

// SetWriteDeadline sets the deadline of the server's writes.
func (c *FakeConn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// Done is closed when the connection has ended.
func (c *FakeConn) Done() <-chan struct{} { return c.closed }

// ClientClosedStream reports whether the client sent </stream:stream>.
func (c *FakeConn) ClientClosedStream() bool { return c.streamClosed.Load() }

// Err is why the connection ended (nil for a clean close by the client).
func (c *FakeConn) Err() error { return c.err }

// Write sends raw XML to the client (byte by byte with ByteAtATime).
func (c *FakeConn) Write(s string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.srv.opts.ByteAtATime {
		_, err := io.WriteString(c.conn, s)
		return err
	}
	for i := 0; i < len(s); i++ {
		if _, err := c.conn.Write([]byte{s[i]}); err != nil {
			return err
		}
	}
	return nil
}

// WriteCounted streams r to the client in chunks and returns how many bytes
// were written before the first error (e.g. the client closed).
func (c *FakeConn) WriteCounted(r io.Reader) (int64, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return io.Copy(c.conn, r)
}

// Close drops the TCP connection without closing the stream.
func (c *FakeConn) Close() { c.raw.Close() }

// Next waits up to d for the next element from the client.
func (c *FakeConn) Next(d time.Duration) (Element, error) {
	select {
	case e, ok := <-c.In:
		if !ok {
			return Element{}, fmt.Errorf("xmppconntest: connection closed: %v", c.err)
		}
		return e, nil
	case <-time.After(d):
		return Element{}, errors.New("xmppconntest: timeout waiting for a client element")
	}
}

// WaitFor returns the first element (skipping others) for which match is
// true, waiting up to d in total.
func (c *FakeConn) WaitFor(d time.Duration, match func(Element) bool) (Element, error) {
	deadline := time.Now().Add(d)
	for {
		e, err := c.Next(time.Until(deadline))
		if err != nil {
			return e, err
		}
		if match(e) {
			return e, nil
		}
	}
}

const (
	nsStream  = "http://etherx.jabber.org/streams"
	nsTLS     = "urn:ietf:params:xml:ns:xmpp-tls"
	nsSASL    = "urn:ietf:params:xml:ns:xmpp-sasl"
	nsBind    = "urn:ietf:params:xml:ns:xmpp-bind"
	nsSession = "urn:ietf:params:xml:ns:xmpp-session"
	nsSM      = "urn:xmpp:sm:3"
)

var errStreamClosed = errors.New("xmppconntest: client closed the stream")

func (c *FakeConn) restart() {
	c.br = bufio.NewReader(c.conn)
	c.dec = xml.NewDecoder(c.br)
}

// header waits for the client's stream header and answers with ours plus
// the given features.
func (c *FakeConn) header(features string) error {
	for {
		tok, err := c.dec.Token()
		if err != nil {
			return err
		}
		if se, ok := tok.(xml.StartElement); ok {
			if se.Name.Space != nsStream || se.Name.Local != "stream" {
				return fmt.Errorf("xmppconntest: expected stream header, got <%s>", se.Name.Local)
			}
			break
		}
	}
	id := fmt.Sprintf("fake-%d", time.Now().UnixNano())
	return c.Write(`<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='` + nsStream +
		`' id='` + id + `' from='` + c.srv.Domain + `' version='1.0' xml:lang='en'>` +
		`<stream:features>` + features + `</stream:features>`)
}

// next reads the next top-level element.
func (c *FakeConn) next() (Element, error) {
	for {
		tok, err := c.dec.Token()
		if err != nil {
			return Element{}, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			var e Element
			if err := c.dec.DecodeElement(&e, &t); err != nil {
				return Element{}, err
			}
			return e, nil
		case xml.EndElement:
			c.streamClosed.Store(true)
			return Element{}, errStreamClosed
		}
	}
}

func (c *FakeConn) serve() error {
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	c.restart()
	s := c.srv
	mechs := `<mechanisms xmlns='` + nsSASL + `'><mechanism>PLAIN</mechanism></mechanisms>`
	if s.opts.NoStartTLS {
		if err := c.header(mechs); err != nil {
			return err
		}
	} else {
		if err := c.header(`<starttls xmlns='` + nsTLS + `'><required/></starttls>`); err != nil {
			return err
		}
		e, err := c.next()
		if err != nil {
			return err
		}
		if e.XMLName.Local != "starttls" {
			return fmt.Errorf("xmppconntest: expected <starttls/>, got %v", e)
		}
		if err := c.Write(`<proceed xmlns='` + nsTLS + `'/>`); err != nil {
			return err
		}
		tc := tls.Server(c.raw, s.tlsCfg)
		if err := tc.Handshake(); err != nil {
			return err
		}
		c.conn = tc
		c.restart()
		if err := c.header(mechs); err != nil {
			return err
		}
	}
	user, err := c.auth()
	if err != nil {
		return err
	}
	c.restart()
	features := `<bind xmlns='` + nsBind + `'/><session xmlns='` + nsSession + `'><optional/></session>`
	if s.opts.StreamManagement {
		features += `<sm xmlns='` + nsSM + `'/>`
	}
	if err := c.header(features); err != nil {
		return err
	}
	delivered := false
	smOn, handled := false, 0
	c.conn.SetDeadline(time.Time{})
	for {
		e, err := c.next()
		if errors.Is(err, errStreamClosed) {
			c.Write(`</stream:stream>`)
			return nil
		}
		if err != nil {
			return err
		}
		if e.XMLName.Space == nsSM && s.opts.StreamManagement {
			var reply string
			switch e.XMLName.Local {
			case "enable":
				smOn = true
				reply = `<enabled xmlns='` + nsSM + `' id='fake-sm' resume='true' max='60'/>`
			case "resume":
				reply = `<failed xmlns='` + nsSM + `'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>`
			case "r":
				reply = fmt.Sprintf(`<a xmlns='`+nsSM+`' h='%d'/>`, handled)
			}
			if reply != "" {
				if err := c.Write(reply); err != nil {
					return err
				}
			}
		}
		if smOn && e.XMLName.Space == "jabber:client" {
			switch e.XMLName.Local {
			case "message", "presence", "iq":
				handled++
			}
		}
		if e.XMLName.Local == "iq" && (e.Attr("type") == "get" || e.Attr("type") == "set") {
			switch {
			case strings.Contains(e.Inner, nsBind):
				res := "fake"
				var b struct {
					Resource string `xml:"bind>resource"`
				}
				if xml.Unmarshal([]byte("<x>"+e.Inner+"</x>"), &b) == nil && b.Resource != "" {
					res = b.Resource
				}
				c.JID = user + "@" + s.Domain + "/" + res
				if err := c.Write(`<iq type='result' id='` + xmlEscape(e.Attr("id")) + `'><bind xmlns='` + nsBind +
					`'><jid>` + xmlEscape(c.JID) + `</jid></bind></iq>`); err != nil {
					return err
				}
				if !delivered {
					delivered = true
					select {
					case s.conns <- c:
					default:
					}
				}
				continue
			case strings.Contains(e.Inner, nsSession):
				if err := c.Write(`<iq type='result' id='` + xmlEscape(e.Attr("id")) + `'/>`); err != nil {
					return err
				}
				continue
			case !c.noAutoReply.Load():
				reply := `<iq type='result' id='` + xmlEscape(e.Attr("id")) + `'/>`
				if strings.Contains(e.Inner, "jabber:iq:roster") && e.Attr("type") == "get" {
					reply = `<iq type='result' id='` + xmlEscape(e.Attr("id")) + `'><query xmlns='jabber:iq:roster'/></iq>`
				}
				if err := c.Write(reply); err != nil {
					return err
				}
			}
		}
		select {
		case c.In <- e:
		default: // a test that does not read In must not stall the server
		}
	}
}

// auth runs SASL PLAIN; failures are answered and the client may retry.
func (c *FakeConn) auth() (string, error) {
	s := c.srv
	for {
		e, err := c.next()
		if err != nil {
			return "", err
		}
		if e.XMLName.Local != "auth" || e.XMLName.Space != nsSASL {
			return "", fmt.Errorf("xmppconntest: expected <auth/>, got %v", e)
		}
		s.auths.Add(1)
		if e.Attr("mechanism") != "PLAIN" {
			if err := c.Write(`<failure xmlns='` + nsSASL + `'><invalid-mechanism/></failure>`); err != nil {
				return "", err
			}
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(e.Inner))
		parts := bytes.Split(raw, []byte{0})
		ok := err == nil && len(parts) == 3
		var user string
		if ok {
			user = string(parts[1])
			want, known := "secret", true
			if s.opts.Users != nil {
				want, known = s.opts.Users[user]
			}
			ok = known && string(parts[2]) == want
		}
		if cond := s.opts.AuthFailure; cond != "" || !ok {
			if cond == "" {
				cond = "not-authorized"
			}
			if err := c.Write(`<failure xmlns='` + nsSASL + `'><` + cond + `/></failure>`); err != nil {
				return "", err
			}
			continue
		}
		return user, c.Write(`<success xmlns='` + nsSASL + `'/>`)
	}
}

func xmlEscape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
