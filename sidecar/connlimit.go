package sidecar

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
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

// reject writes the 503 answer and closes the connection (refuse).
func reject(c net.Conn) {
	refuse(c, ErrTooManyConnections, rejectTimeout, 64<<10)
}

// refuse writes err's JSON answer on c as a whole HTTP/1.1 response with
// Connection: close, half-closes and drains what the client still sends —
// closing with unread data would reset the connection, and the reset
// wipes the answer before the client reads it — within timeout and up to
// drain bytes, then closes c.
func refuse(c net.Conn, err error, timeout time.Duration, drain int64) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	status, code := statusFor(err)
	body := fmt.Sprintf(`{"error":{"code":%q,"message":%q}}`+"\n", code, publicMessage(err, status))
	retry := ""
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		retry = "Retry-After: 1\r\n"
	}
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n%sConnection: close\r\nContent-Length: %s\r\n\r\n%s",
		status, http.StatusText(status), retry, strconv.Itoa(len(body)), body)
	closeWrite(c)
	io.Copy(io.Discard, io.LimitReader(c, drain))
}

// closeWrite half-closes c (TCP and unix sockets, through our wrappers).
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// limitConn gives its slot back when closed, once.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) CloseWrite() error { return closeWrite(c.Conn) }

// SyscallConn is the socket's, for the parker's wait for the next request
// (park.go readNext) and its look at a parked BOSH request's (peerClosed).
func (c *limitConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errNoSyscallConn
}

// errNoSyscallConn: the connection under a limitConn is not a socket.
var errNoSyscallConn = errors.New("sidecar: not a socket")

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
