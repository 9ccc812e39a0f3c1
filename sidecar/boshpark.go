package sidecar

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A held BOSH request is parked as a JSON long poll is (park.go): once it
// has been processed and has to wait, its handler hijacks the connection
// and returns, and the request waits as a boshPark — the net.Conn, a
// timer and its place among the session's held requests — with no
// goroutine and none of net/http's per-connection buffers, request
// objects and goroutines (≈ 23 KB and two goroutines per held request,
// BenchmarkHeldBOSHMemory).
// Stanzas for the client, the wait running out, a newer request or a
// retransmission of the same rid, the end of the client and the
// shutdown fire it: an answerer goroutine (answerOn) answers it, as the
// handler did, writes the HTTP/1.1 response itself and serves or hands
// back the connection's next request.
//
// A browser that went away while its request was parked is not noticed
// until the answer: before taking anything from the client's queue the
// answer looks at the socket without reading (peerClosed). A closed one
// gets nothing, and what waits stays for the next request, as when the
// handler saw its request's context end.

// boshPark is one held BOSH request parked without net/http.
type boshPark struct {
	pk *parker
	heldConn
	bs    *boshSession
	w     *boshWaiter
	start time.Time

	mu      sync.Mutex // held while arming; the answer waits for it
	timer   *time.Timer
	fired   atomic.Bool
	tracked bool // counted in pk.wg
}

// arm registers p with the parker and starts its wait; p.mu is held. A
// parker that is shutting down answers it at once.
func (p *boshPark) arm(wait time.Duration) {
	pk := p.pk
	pk.mu.Lock()
	if pk.closed {
		pk.mu.Unlock()
		p.fire()
		return
	}
	pk.bosh[p] = struct{}{}
	pk.wg.Add(1)
	p.tracked = true
	pk.mu.Unlock()
	p.timer = time.AfterFunc(wait, p.fire)
}

// fire answers the request, once, on an answerer.
func (p *boshPark) fire() {
	if p.fired.CompareAndSwap(false, true) {
		p.pk.answerOn(p.answer)
	}
}

const (
	// maxIdleAnswerers bounds the answerers waiting for work, and
	// answererIdle how long one waits.
	maxIdleAnswerers = 16
	answererIdle     = 2 * time.Second
)

// answerOn runs answer on an idle answerer, or on a new one. An answer
// runs the next request of its connection through the whole handler
// (repoll.go), deeper than the runtime's starting stack, which it sizes
// from the average goroutine's — a blocked c2s reader's. A new goroutine
// per answer grew its stack again every time (≈ 6 % of the CPU of
// BenchmarkBOSHExchange in runtime.newstack); an answerer keeps the stack
// it grew for the next answer while it waits. At most maxIdleAnswerers
// wait, each answererIdle at most, none past the shutdown.
func (pk *parker) answerOn(answer func()) {
	select {
	case pk.answerers <- answer:
	default:
		go pk.answerer(answer)
	}
}

// answerer runs answer and then whatever answerOn hands it, until it has
// waited answererIdle for work, too many wait already, or the parker
// shuts down.
func (pk *parker) answerer(answer func()) {
	var t *time.Timer
	for answer != nil {
		answer()
		answer = nil
		if pk.idleAnswerers.Add(1) > maxIdleAnswerers {
			pk.idleAnswerers.Add(-1)
			return
		}
		if t == nil {
			t = time.NewTimer(answererIdle)
		} else {
			t.Reset(answererIdle)
		}
		select {
		case answer = <-pk.answerers:
		case <-t.C:
		case <-pk.repollBase.Done():
		}
		pk.idleAnswerers.Add(-1)
	}
	if t != nil {
		t.Stop()
	}
}

// answer writes the request's response, as hold1 does for a request held
// in its handler, and hands the connection back or closes it.
func (p *boshPark) answer() {
	p.mu.Lock()
	timer, tracked := p.timer, p.tracked
	p.mu.Unlock()
	if timer != nil {
		timer.Stop()
	}
	pk, bs := p.pk, p.bs
	superseded := bs.unregister(p.w)
	pk.mu.Lock()
	closing := pk.closed
	pk.mu.Unlock()
	keep := p.keep && pk.ln != nil && !closing && !pk.a.draining.Load()
	var resp []byte
	end := false
	switch {
	case closing:
		bs.c.end("system-shutdown", "shutdown")
		resp, end = bs.endBody(), true
	case superseded:
		// The retransmission took over: this copy answers empty.
		resp = boshPayload("")
	case peerClosed(p.conn):
		// Nobody reads this answer: what waits stays for the next
		// request, which another held one may be.
		p.conn.Close()
		p.untrack(tracked)
		if bs.c.pending() {
			bs.notify()
		}
		return
	default:
		resp, end = bs.reply(p.w.rid)
	}
	now := time.Now()
	b := bytes.NewBuffer(make([]byte, 0, 192+len(resp)))
	p.writeHead(b, p.header, "text/xml; charset=utf-8", now, len(resp), true, keep)
	b.Write(resp)
	// Recorded when answered, as browserHandler does before net/http
	// flushes.
	pk.a.record(context.Background(), "bosh", http.StatusOK, p.start, bs.s.user)
	p.conn.SetWriteDeadline(now.Add(parkWriteTimeout))
	_, err := p.conn.Write(b.Bytes())
	p.conn.SetWriteDeadline(time.Time{})
	if end {
		bs.finish()
	}
	pk.mu.Lock()
	delete(pk.bosh, p)
	keep = keep && !pk.closed
	pk.mu.Unlock()
	pk.handBack(&p.heldConn, err == nil && keep)
	if tracked {
		pk.wg.Done()
	}
}

// untrack forgets p, whose connection is closed.
func (p *boshPark) untrack(tracked bool) {
	p.pk.mu.Lock()
	delete(p.pk.bosh, p)
	p.pk.mu.Unlock()
	if tracked {
		p.pk.wg.Done()
	}
}

// peerClosed reports whether the other end of c has closed it (or reset
// it), without reading: a peek that does not wait. Bytes waiting (a
// pipelined request) or none mean open; a connection that cannot be
// looked at counts as open. The API listener's connections are
// limitConns, which give their socket (connlimit.go).
func peerClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	var one [1]byte
	err = raw.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = (n == 0 && err == nil) || (err != nil && err != syscall.EAGAIN && err != syscall.EINTR)
		return true
	})
	return closed || err != nil
}
