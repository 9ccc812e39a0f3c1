package xmppconntest

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// rawClient is a minimal hand-driven XMPP client for checking the server's
// configuration without depending on package xmppconn.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	dec  *xml.Decoder
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawClient{t: t, conn: c, dec: xml.NewDecoder(bufio.NewReader(c))}
}

func (r *rawClient) send(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.conn, s); err != nil {
		r.t.Fatal(err)
	}
}

// open sends a stream header and returns the stream features.
func (r *rawClient) open(domain string) features {
	r.t.Helper()
	r.dec = xml.NewDecoder(bufio.NewReader(r.conn))
	r.send(fmt.Sprintf(`<?xml version='1.0'?><stream:stream to='%s' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>`, domain))
	for {
		tok, err := r.dec.Token()
		if err != nil {
			r.t.Fatalf("reading stream header: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "stream" {
			break
		}
	}
	var f features
	r.next(&f)
	return f
}

// next decodes the next top-level element into v.
func (r *rawClient) next(v any) xml.StartElement {
	r.t.Helper()
	for {
		tok, err := r.dec.Token()
		if err != nil {
			r.t.Fatalf("reading: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if err := r.dec.DecodeElement(v, &se); err != nil {
				r.t.Fatal(err)
			}
			return se
		}
	}
}

type features struct {
	StartTLS   *struct{} `xml:"urn:ietf:params:xml:ns:xmpp-tls starttls"`
	Mechanisms []string  `xml:"urn:ietf:params:xml:ns:xmpp-sasl mechanisms>mechanism"`
	SM         *struct{} `xml:"urn:xmpp:sm:3 sm"`
	Bind       *struct{} `xml:"urn:ietf:params:xml:ns:xmpp-bind bind"`
}

type anyElem struct {
	XMLName xml.Name
	Inner   string `xml:",innerxml"`
}

func (r *rawClient) starttls(cfg *tls.Config, domain string) features {
	r.t.Helper()
	r.send(`<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>`)
	var e anyElem
	r.next(&e)
	if e.XMLName.Local != "proceed" {
		r.t.Fatalf("starttls: got <%s>", e.XMLName.Local)
	}
	tc := tls.Client(r.conn, cfg)
	if err := tc.Handshake(); err != nil {
		r.t.Fatalf("TLS handshake: %v", err)
	}
	r.conn = tc
	return r.open(domain)
}

// plainAuth tries SASL PLAIN and reports success.
func (r *rawClient) plainAuth(user, pass string) bool {
	r.t.Helper()
	msg := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	r.send(`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>` + msg + `</auth>`)
	var e anyElem
	r.next(&e)
	return e.XMLName.Local == "success"
}

func TestStartProsody(t *testing.T) {
	tests := []struct {
		name      string
		opts      Options
		starttls  bool
		wantMechs []string
		register  string // "ctl" or "files"
	}{
		{"default", Options{}, true, []string{"PLAIN", "SCRAM-SHA-1"}, "ctl"},
		{"sha256", Options{PasswordHash: "SHA-256"}, true, []string{"PLAIN", "SCRAM-SHA-256"}, "files"},
		{"plain-only", Options{PlainOnly: true}, true, []string{"PLAIN"}, "files"},
		{"no-tls", Options{NoTLS: true}, false, []string{"PLAIN", "SCRAM-SHA-1"}, "files"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			s := StartProsody(t, tt.opts)
			t.Logf("started in %v", time.Since(start))
			switch tt.register {
			case "ctl":
				start = time.Now()
				s.Register(t, "alice", "secret")
				t.Logf("prosodyctl register took %v", time.Since(start))
			default:
				s.RegisterMany(t, map[string]string{"alice": "secret"})
			}

			r := dialRaw(t, s.Addr)
			f := r.open(s.Domain)
			if got := f.StartTLS != nil; got != tt.starttls {
				t.Fatalf("STARTTLS offered = %v, want %v", got, tt.starttls)
			}
			if tt.starttls {
				if len(f.Mechanisms) != 0 {
					t.Errorf("mechanisms offered before TLS: %v", f.Mechanisms)
				}
				f = r.starttls(s.TLSConfig(), s.Domain)
			}
			got := slices.Clone(f.Mechanisms)
			slices.Sort(got)
			if !slices.Equal(got, tt.wantMechs) {
				t.Errorf("mechanisms = %v, want %v", got, tt.wantMechs)
			}
			if r.plainAuth("alice", "wrong") {
				t.Fatal("wrong password accepted")
			}
			if !r.plainAuth("alice", "secret") {
				t.Fatalf("PLAIN login failed\n%s", s.LogTail(30))
			}
			f = r.open(s.Domain)
			if f.Bind == nil || (f.SM == nil) {
				t.Errorf("after auth: bind=%v sm=%v, want both", f.Bind != nil, f.SM != nil)
			}
			if n := s.AuthFailures("alice"); n != 1 {
				t.Errorf("AuthFailures(alice) = %d, want 1", n)
			}
			if n := s.AuthSuccesses("alice"); n != 1 {
				t.Errorf("AuthSuccesses(alice) = %d, want 1", n)
			}
			if m := s.AuthMechanisms("alice"); !slices.Equal(m, []string{"PLAIN"}) {
				t.Errorf("AuthMechanisms(alice) = %v, want [PLAIN]", m)
			}
		})
	}
}

func TestRestartKillHTTP(t *testing.T) {
	s := StartProsody(t, Options{HTTP: true, DirectTLS: true})
	s.RegisterMany(t, map[string]string{"bob": "pw"})

	// Direct TLS port speaks TLS immediately.
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.DirectTLSAddr, s.TLSConfig())
	if err != nil {
		t.Fatalf("direct TLS: %v", err)
	}
	c.Close()

	// BOSH answers on the HTTP port.
	hc, err := net.DialTimeout("tcp", s.HTTPAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(hc, "GET /http-bind HTTP/1.0\r\nHost: %s\r\n\r\n", s.Domain)
	hc.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, _ := io.ReadAll(hc)
	hc.Close()
	if !strings.Contains(string(resp), "200 OK") || !strings.Contains(string(resp), "BOSH") {
		t.Errorf("BOSH GET: %q", resp)
	}

	// WebSocket upgrades on the same port.
	wc, err := net.DialTimeout("tcp", s.HTTPAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(wc, "GET /xmpp-websocket HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n", s.Domain)
	wc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, _ := wc.Read(buf)
	wc.Close()
	if !strings.Contains(string(buf[:n]), "101 Switching Protocols") {
		t.Errorf("WebSocket upgrade: %q", buf[:n])
	}

	start := time.Now()
	s.Restart(t)
	t.Logf("restart took %v", time.Since(start))
	s.Kill(t)
	if s.Running() {
		t.Fatal("running after Kill")
	}
	if _, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
		t.Fatal("port still open after Kill")
	}
	s.Start(t)

	// The account survives restarts and kills.
	r := dialRaw(t, s.Addr)
	r.open(s.Domain)
	r.starttls(s.TLSConfig(), s.Domain)
	if !r.plainAuth("bob", "pw") {
		t.Fatalf("login after restart failed\n%s", s.LogTail(30))
	}
}

func TestEscapeNode(t *testing.T) {
	for in, want := range map[string]string{
		"example.test": "example%2etest",
		"alice":        "alice",
		"a-b_c":        "a%2db%5fc",
	} {
		if got := escapeNode(in); got != want {
			t.Errorf("escapeNode(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStartEjabberd(t *testing.T) {
	start := time.Now()
	e := StartEjabberd(t, EjabberdOptions{})
	t.Logf("ejabberd started in %v", time.Since(start))
	start = time.Now()
	e.Register(t, "alice", "secret")
	t.Logf("ejabberdctl register took %v", time.Since(start))

	r := dialRaw(t, e.Addr)
	f := r.open(e.Domain)
	if f.StartTLS == nil {
		t.Fatal("STARTTLS not offered")
	}
	f = r.starttls(e.TLSConfig(), e.Domain)
	if !slices.Contains(f.Mechanisms, "PLAIN") || !slices.Contains(f.Mechanisms, "SCRAM-SHA-1") {
		t.Errorf("mechanisms = %v, want PLAIN and SCRAM-SHA-1", f.Mechanisms)
	}
	if r.plainAuth("alice", "wrong") {
		t.Fatal("wrong password accepted")
	}
	if !r.plainAuth("alice", "secret") {
		t.Fatalf("PLAIN login failed\n%s", e.LogTail(30))
	}
	f = r.open(e.Domain)
	if f.Bind == nil || f.SM == nil {
		t.Errorf("after auth: bind=%v sm=%v, want both", f.Bind != nil, f.SM != nil)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.AuthFailures("alice") != 1 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := e.AuthFailures("alice"); n != 1 {
		t.Errorf("AuthFailures(alice) = %d, want 1\n%s", n, e.LogTail(20))
	}
	start = time.Now()
	e.Restart(t)
	t.Logf("ejabberd restart took %v", time.Since(start))
	e.Kill(t)
	e.Start(t)
	r = dialRaw(t, e.Addr)
	r.open(e.Domain)
	r.starttls(e.TLSConfig(), e.Domain)
	if !r.plainAuth("alice", "secret") {
		t.Fatalf("login after kill+start failed\n%s", e.LogTail(30))
	}
}

// TestStartPortTaken: a port of Prosody's bound by someone else when
// Prosody starts is an error, not a server that looks ready while its
// clients reach whatever holds the port (Prosody logs the bind failure
// and runs on without that port). StartProsody then starts it again on
// other ports.
func TestStartPortTaken(t *testing.T) {
	s := StartProsody(t, Options{})
	s.Kill(t)
	squatter, err := net.Listen("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	if err := s.start(t); !errors.Is(err, errPortTaken) {
		t.Fatalf("start with the c2s port taken: %v, want errPortTaken", err)
	}
	if s.Running() {
		t.Fatal("prosody left running without its c2s port")
	}
}
