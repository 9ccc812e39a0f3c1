package xmppconntest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy relays loopback TCP connections to a server, for tests that break
// a link as a network would while the server runs on: Cut drops every
// relayed connection, Refuse also turns new ones away until Restore, and
// Hold drops what clients write while what the server writes still
// arrives. Its listener stays open for its whole life, so no other
// process can take its address while the link is down. Every goroutine it
// starts has ended when tb's cleanup returns.
type Proxy struct {
	ln       net.Listener
	target   string
	hold     atomic.Bool
	refuse   atomic.Bool
	accepted atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
	wg       sync.WaitGroup
}

// StartProxy listens on a free loopback port and relays each connection
// to target (host:port). tb's cleanup closes everything and waits.
func StartProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("xmppconntest: proxy listen: %v", err)
	}
	p := &Proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(func() {
		ln.Close()
		p.Refuse()
		p.wg.Wait()
	})
	return p
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		if p.refuse.Load() {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.refuse.Load() { // Refused (or cleaned up) since: Cut has run
			p.mu.Unlock()
			c.Close()
			s.Close()
			continue
		}
		p.conns = append(p.conns, c, s)
		p.wg.Add(2)
		p.mu.Unlock()
		go func() { defer p.wg.Done(); p.upstream(c, s); s.Close() }()
		go func() { defer p.wg.Done(); io.Copy(c, s); c.Close() }()
	}
}

// upstream copies what the client c writes to the server s, dropping it
// while Hold is on.
func (p *Proxy) upstream(c, s net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 && !p.hold.Load() {
			if _, err := s.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Accepted is how many connections the proxy accepted so far, relayed or
// not: each a client's dial.
func (p *Proxy) Accepted() int { return int(p.accepted.Load()) }

// Addr is the proxy's host:port, for the client to dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every relayed connection, both sides; new ones are relayed.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Refuse cuts every relayed connection and closes each new one at once,
// until Restore: the server is unreachable.
func (p *Proxy) Refuse() {
	p.refuse.Store(true)
	p.Cut()
}

// Restore relays new connections again after Refuse.
func (p *Proxy) Restore() { p.refuse.Store(false) }

// Hold, while on, drops what clients write (read and lost, as by a
// network that loses it); what the server writes still arrives.
func (p *Proxy) Hold(on bool) { p.hold.Store(on) }
