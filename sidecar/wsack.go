package sidecar

import (
	"context"
	"time"
)

// A WebSocket's acknowledgement in cluster mode (docs/CLUSTER.md,
// "Browser streams"). What a WebSocket writes stays in Redis
// (bridgedurable.go) until the browser proves it has it: after a written
// batch the stream sends a ping, and the browser's WebSocket answers it
// with a pong once every frame before it has arrived (RFC 6455 §5.5.2,
// §5.5.3: TCP keeps the order, and every browser answers pings by
// itself). On that pong the stream acknowledges (bridge.acked) the
// highest stanza number written before the ping; what no pong covered
// when the node dies reaches the page's next stream, as for BOSH.
//
// The ping's payload is coder/websocket's, a counter of this connection's
// pings, and a pong counts only when its payload is that of the ping out
// on this connection (Conn.Ping): an unsolicited pong, a pong of garbage,
// of a number never sent, or of another connection's ping, is ignored.
// The stanza number a pong acknowledges is never read from the browser;
// it is what this stream had written when the ping went, so a pong cannot
// acknowledge what this connection has not written. One ping is out at a
// time (the keepalive's too, websocket.go): a batch written meanwhile
// is covered by the next ping, sent once the pong comes. A ping with no
// pong within wsWriteTimeout ends the stream, as the keepalive's always
// did; what the stream wrote then stays in Redis, bounded like any
// backlog (--event-buffer stanzas, maxHeldBytes). On a single node
// nothing is numbered (top 0) and only the keepalive pings.

// wrote notes that the stream wrote stanzas up to number top (0: none
// numbered) and has a ping sent, unless one is out.
func (t *wsStream) wrote(top uint64) {
	if top == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.written = max(t.written, top)
	if t.pinging || t.finished {
		return
	}
	t.pinging = true
	t.acks.Add(1) // the writer's calls happen before endDone, run's Wait after it
	go func() {   // run waits for it; it ends at the pong or its timeout
		defer t.acks.Done()
		t.pingUntilAcked()
	}()
}

// pingUntilAcked pings the browser, one ping at a time, until a pong
// covers every stanza the stream wrote, and acknowledges what each pong
// covers. The caller set t.pinging; it is cleared here. A ping with no
// pong within wsWriteTimeout ends the stream (false).
func (t *wsStream) pingUntilAcked() bool {
	for {
		t.mu.Lock()
		top := t.written
		t.mu.Unlock()
		pctx, cancel := context.WithTimeout(context.Background(), wsWriteTimeout)
		err := t.ws.Ping(pctx)
		cancel()
		if err != nil {
			t.mu.Lock()
			t.pinging = false
			t.mu.Unlock()
			t.c.end("", "")
			return false
		}
		t.s.lastPoll.Store(time.Now().UnixNano())
		t.mu.Lock()
		ack := top > t.ponged
		t.ponged = max(t.ponged, top)
		t.mu.Unlock()
		if ack {
			t.c.b.acked(top)
		}
		t.mu.Lock()
		more := t.written > t.ponged && !t.finished
		t.pinging = more
		t.mu.Unlock()
		if !more {
			return true
		}
	}
}
