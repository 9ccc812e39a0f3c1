package xmppconn

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// stream is one transport connection and its XML stream state.
type stream struct {
	raw      net.Conn // TCP
	nc       net.Conn // raw or the TLS layer on top of it
	tls      *tls.Conn
	br       *byteReader
	fr       framer
	hdr      []byte // the server's stream header, namespace context for parsing
	features *node
	unwatch  func() bool // stops the context watch set up by dialStream
}

func (s *stream) close() { s.nc.Close() }

// dialStream connects, secures the stream and reads the first features that
// matter (after TLS). It does not authenticate.
func dialStream(ctx context.Context, cfg *Config) (*stream, error) {
	addr := cfg.Addr
	if addr == "" {
		service, port := "xmpp-client", "5222"
		if cfg.TLS == TLSDirect {
			service, port = "xmpps-client", "5223" // XEP-0368
		}
		addr = net.JoinHostPort(cfg.Domain, port)
		if _, srvs, err := net.DefaultResolver.LookupSRV(ctx, service, "tcp", cfg.Domain); err == nil && len(srvs) > 0 && srvs[0].Target != "." {
			addr = net.JoinHostPort(srvs[0].Target, strconv.Itoa(int(srvs[0].Port)))
		}
	}
	if g := cfg.ConnectGate; g != nil {
		release, err := g.Acquire(ctx)
		if err != nil {
			return nil, &notAdmitted{what: "connection", err: err, beforeDial: true}
		}
		defer release() // secured and its features read, or failed
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("xmppconn: dial %s: %w", addr, err)
	}
	s := &stream{raw: raw, nc: raw}
	s.fr.max = cfg.MaxStanzaSize
	s.watch(ctx)
	ok := false
	defer func() {
		if !ok {
			s.unwatch()
			s.close()
		}
	}()
	if cfg.TLS == TLSDirect {
		if err := s.startTLS(ctx, cfg); err != nil {
			return nil, err
		}
	}
	if err := s.open(cfg.Domain); err != nil {
		return nil, err
	}
	if cfg.TLS == TLSStartTLS {
		if s.features.child(nsTLS, "starttls") == nil {
			return nil, fmt.Errorf("%w: server at %s does not offer STARTTLS", ErrTLSRequired, addr)
		}
		if err := s.write([]byte(`<starttls xmlns="` + nsTLS + `"/>`)); err != nil {
			return nil, err
		}
		n, err := s.read()
		if err != nil {
			return nil, err
		}
		if !n.is(nsTLS, "proceed") {
			return nil, fmt.Errorf("%w: STARTTLS refused (%s)", ErrTLSRequired, n.name.Local)
		}
		if err := s.startTLS(ctx, cfg); err != nil {
			return nil, err
		}
		if err := s.open(cfg.Domain); err != nil {
			return nil, err
		}
	}
	ok = true
	return s, nil
}

// watch bounds the negotiation on s by ctx: its deadline, and its
// cancellation. unwatch stops it.
func (s *stream) watch(ctx context.Context) {
	dl, _ := ctx.Deadline()
	s.raw.SetDeadline(dl)
	s.unwatch = context.AfterFunc(ctx, func() { s.raw.SetDeadline(time.Unix(1, 0)) })
}

func (s *stream) startTLS(ctx context.Context, cfg *Config) error {
	tc := cfg.TLSConfig // completed by Config.normalize; shared, never modified
	t := tls.Client(s.raw, tc)
	if err := t.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("xmppconn: TLS handshake: %w", err)
	}
	s.tls = t
	s.nc = t
	if s.br != nil {
		s.br.release()
		s.br = nil
	}
	return nil
}

// open sends a stream header, reads the server's and its features.
func (s *stream) open(domain string) error {
	if s.br == nil {
		s.br = &byteReader{r: s.nc}
	}
	s.fr.reset(s.br)
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0"?><stream:stream xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams" version="1.0" xml:lang="en"`)
	attr(&b, "to", domain)
	b.WriteString(">")
	if err := s.write(b.Bytes()); err != nil {
		return err
	}
	for {
		kind, frame, err := s.fr.next()
		if err != nil {
			return s.readErr(err)
		}
		if kind == frameSpace {
			continue
		}
		if kind != frameStreamOpen {
			return fmt.Errorf("%w: expected stream header", ErrProtocol)
		}
		h, err := parseHeader(frame)
		if err != nil {
			return err
		}
		s.hdr = headerContext(frame, h)
		break
	}
	n, err := s.read()
	if err != nil {
		return err
	}
	if !n.is(nsStream, "features") {
		return fmt.Errorf("%w: expected stream features, got %s", ErrProtocol, n.name.Local)
	}
	s.features = n
	return nil
}

// restart opens a new stream on the same transport (after SASL success).
func (s *stream) restart(domain string) error { return s.open(domain) }

// write sends raw bytes. Callers serialize writes.
func (s *stream) write(b []byte) error {
	_, err := s.nc.Write(b)
	if err != nil {
		return fmt.Errorf("xmppconn: write: %w", err)
	}
	return nil
}

// read returns the next top-level element, skipping whitespace. A stream
// error or the server's stream close become errors.
func (s *stream) read() (*node, error) {
	for {
		n, err := s.readOne()
		if n != nil || err != nil {
			return n, err
		}
	}
}

// readOne is read, but returns (nil, nil) after whitespace.
func (s *stream) readOne() (*node, error) {
	{
		kind, frame, err := s.fr.next()
		if err != nil {
			return nil, s.readErr(err)
		}
		switch kind {
		case frameSpace:
			return nil, nil
		case frameStreamClose:
			return nil, fmt.Errorf("%w: server closed the stream", errStreamClosed)
		case frameStreamOpen:
			return nil, fmt.Errorf("%w: unexpected stream header", ErrProtocol)
		case frameSkipped:
			return s.skipped(frame)
		}
		n, err := parseElement(s.hdr, frame)
		if err != nil {
			return nil, err
		}
		if n.is(nsStream, "error") {
			return nil, parseStreamError(n)
		}
		return n, nil
	}
}

// skipped returns the node of a stanza read through because it was over
// the size limit: its start tag, no children, and skipped set. Only
// stanzas may be skipped; any other element that large (stream features,
// a SASL challenge, a stream error) ends the stream.
func (s *stream) skipped(tag []byte) (*node, error) {
	size := s.fr.skipped()
	n, err := parseStartTag(s.hdr, tag)
	if err != nil || !isStanza(n) {
		return nil, s.readErr(fmt.Errorf("%w: a %d-byte element", ErrStanzaTooLarge, size))
	}
	n.skipped = size
	return n, nil
}

// isStanza reports whether n is a message, presence or iq (RFC 6120 §8).
func isStanza(n *node) bool {
	return n.name.Space == nsClient && (n.name.Local == "message" || n.name.Local == "presence" || n.name.Local == "iq")
}

// errStreamClosed marks a stream closed cleanly by the server.
var errStreamClosed = errors.New("xmppconn: stream closed")

// readErr turns a framing error into what Dial/Err report, sending a stream
// error to the server when it broke the rules.
func (s *stream) readErr(err error) error {
	var se *StreamError
	switch {
	case errors.Is(err, ErrStanzaTooLarge):
		s.sendStreamError("policy-violation")
	case errors.As(err, &se) && se == errRestrictedXML:
		s.sendStreamError("restricted-xml")
		return fmt.Errorf("%w: restricted XML", ErrProtocol)
	case errors.Is(err, ErrProtocol):
		s.sendStreamError("not-well-formed")
	default:
		return fmt.Errorf("xmppconn: read: %w", err)
	}
	return err
}

// sendStreamError writes a stream error and closes the transport.
func (s *stream) sendStreamError(cond string) {
	s.nc.SetWriteDeadline(time.Now().Add(time.Second))
	s.nc.Write([]byte(`<stream:error><` + cond + ` xmlns="` + nsStreams + `"/></stream:error></stream:stream>`))
	s.close()
}

func parseStreamError(n *node) *StreamError {
	e := &StreamError{Condition: "undefined-condition"}
	for _, k := range n.kids {
		if k.name.Space != nsStreams {
			continue
		}
		if k.name.Local == "text" {
			e.Text = k.text
		} else {
			e.Condition = k.name.Local
		}
	}
	return e
}

func parseStanzaError(n *node) *StanzaError {
	e := &StanzaError{Type: "cancel", Condition: "undefined-condition"}
	en := n.child("", "error")
	if en == nil {
		return e
	}
	if t := en.get("type"); t != "" {
		e.Type = t
	}
	for _, k := range en.kids {
		if k.name.Space != nsStanzas {
			continue
		}
		if k.name.Local == "text" {
			e.Text = k.text
		} else {
			e.Condition = k.name.Local
		}
	}
	return e
}
