package loadtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// ErrAuth is returned when the server refuses a user's credentials.
var ErrAuth = errors.New("loadtest: authentication failed")

// sourceDialer dials loopback servers from a rotating set of 127.0.0.x
// source addresses, so that tens of thousands of client sockets do not
// exhaust one address's ephemeral ports (Linux accepts any 127/8 address
// on the loopback interface, and a server on 127.0.0.1 accepts them all).
type sourceDialer struct {
	addrs []*net.TCPAddr
	next  atomic.Uint64
	dials atomic.Int64 // connections dialed so far
}

// newSourceDialer uses 127.0.0.2 … 127.0.0.(n+1); n ≤ 0 means one address
// (127.0.0.1, the kernel's choice).
func newSourceDialer(n int) *sourceDialer {
	d := &sourceDialer{}
	for i := range min(n, 250) {
		d.addrs = append(d.addrs, &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))})
	}
	return d
}

// DialContext dials a loopback address only.
func (d *sourceDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("loadtest: refusing to dial non-loopback %s", addr)
	}
	nd := net.Dialer{Timeout: 30 * time.Second}
	d.dials.Add(1)
	if len(d.addrs) > 0 {
		nd.LocalAddr = d.addrs[d.next.Add(1)%uint64(len(d.addrs))]
	}
	return nd.DialContext(ctx, network, addr)
}

// maxIdle bounds the keep-alive connections parked between requests: the
// pending polls are in flight, not idle, and every parked connection is a
// descriptor in the server too (at 10,000 users an unbounded pool pushed
// Prosody past its open-files limit).
const maxIdle = 512

// httpClient is a keep-alive client to one loopback server, dialing
// through d.
func (d *sourceDialer) httpClient() *http.Client {
	return &http.Client{
		Timeout: 90 * time.Second,
		Transport: &http.Transport{
			DialContext:         d.DialContext,
			MaxIdleConns:        maxIdle,
			MaxIdleConnsPerHost: maxIdle,
			IdleConnTimeout:     2 * time.Minute,
			DisableCompression:  true,
		},
	}
}

// h2cClient is a client to the sidecar speaking HTTP/2 without TLS (prior
// knowledge, RFC 9113 §3.3) only: the requests in flight, pending polls
// included, share a few connections. When every connection has as many
// streams as the server's SETTINGS_MAX_CONCURRENT_STREAMS allows
// (imsidecar --http2-max-streams), the transport dials one more, so
// Users/limit+1 connections (a user may have a send in flight next to its
// poll), each from the next source address, carry the run.
func (d *sourceDialer) h2cClient() *http.Client {
	tr := &http.Transport{
		DialContext:        d.DialContext,
		IdleConnTimeout:    2 * time.Minute,
		DisableCompression: true,
		Protocols:          new(http.Protocols),
		HTTP2:              &http.HTTP2Config{StrictMaxConcurrentRequests: false},
	}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 90 * time.Second, Transport: tr}
}
