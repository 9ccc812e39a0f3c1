package sidecar

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// limitListener caps the API listener's open connections at --max-connections.
// A connection over the cap is answered at once with 503
// too_many_connections and closed, so a flood of idle or slow clients
// (slowloris) cannot use up the descriptors the XMPP streams need; the
// connections under the cap are cut by the server's ReadHeaderTimeout.
type limitListener struct {
	net.Listener
	slots     chan struct{} // one token per open connection
	rejecting chan struct{} // bounds the goroutines answering rejects
	onReject  func()
}

func newLimitListener(ln net.Listener, max int, onReject func()) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, max), rejecting: make(chan struct{}, 64), onReject: onReject}
}

// Accept returns the next connection under the cap; the ones over it are
// rejected here and never reach the HTTP server.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
		}
		l.onReject()
		select {
		case l.rejecting <- struct{}{}:
			// Owned by the listener; ends within rejectTimeout.
			go func() {
				defer func() { <-l.rejecting }()
				reject(c)
			}()
		default:
			c.Close() // already answering 64 rejects: just drop it
		}
	}
}

// rejectTimeout bounds the answer to a rejected connection.
const rejectTimeout = time.Second

// reject writes the 503 answer, half-closes and drains what the client sent
// (closing with unread data would reset the connection and lose the
// answer), then closes.
func reject(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(rejectTimeout))
	status, code := statusFor(ErrTooManyConnections)
	body := fmt.Sprintf(`{"error":{"code":%q,"message":%q}}`+"\n", code, publicMessage(ErrTooManyConnections, status))
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: %s\r\n\r\n%s",
		status, http.StatusText(status), strconv.Itoa(len(body)), body)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

// limitConn gives its slot back when closed, once.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
