package xmppconn

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// smState is the XEP-0198 outbound state.
type smState struct {
	enabled  bool
	id       string // resumption id; "" if the server did not allow resume
	acked    uint32 // last h the server acknowledged
	unacked  [][]byte
	sinceReq int

	// For a ResumeStore (resume.go): the server's <enabled> location and
	// max; savedH, the inbound count the store accepted (what is acked);
	// replay while unacked stanzas are re-sent (already journaled);
	// closed once Close began; storeFailing after a refused count;
	// unsaved after a failed Save.
	location     string
	max          int
	savedH       uint32
	replay       bool
	closed       bool
	storeFailing bool
	unsaved      bool
}

// ackEvery is how many stanzas we send before asking for an ack.
const ackEvery = 5

// resume tries XEP-0198 resumption. ok=false means the server refused and
// a fresh session must be bound.
func (c *Conn) resume(s *stream, prevID string) (ok bool, err error) {
	c.wmu.Lock()
	inH := c.ackableH()
	c.wmu.Unlock()
	req := `<resume xmlns="` + nsSM + `" previd="` + escAttr(prevID) + `" h="` + strconv.FormatUint(uint64(inH), 10) + `"/>`
	if err := c.writeOn(s, []byte(req)); err != nil {
		return false, err
	}
	n, err := s.read()
	if err != nil {
		return false, err
	}
	switch {
	case n.is(nsSM, "resumed"):
	case n.is(nsSM, "failed"):
		// h, when the server gives it, is how many of our stanzas it
		// handled on the old stream: those are not sent again.
		c.log.Info("xmppconn: stream resumption refused", "condition", firstChildName(n), "h", n.get("h"))
		if h, err := strconv.ParseUint(n.get("h"), 10, 32); err == nil {
			c.wmu.Lock()
			c.ackLocked(uint32(h))
			c.wmu.Unlock()
		}
		return false, nil
	default:
		return false, fmt.Errorf("%w: unexpected %s in reply to resume", ErrProtocol, n.name.Local)
	}
	h, err := strconv.ParseUint(n.get("h"), 10, 32)
	if err != nil {
		return false, fmt.Errorf("%w: bad h in resumed", ErrProtocol)
	}
	c.wmu.Lock()
	// The server sends again, first, every stanza after the count we
	// sent (inH here): with a ResumeStore that refused a count
	// (ackableH), the first c.inH-inH of them went through our Handler
	// already. Handled again, the page would see them twice; counted
	// again, our h would run ahead of the server's, which closes the
	// session for it.
	c.redeliver.Store(c.inH.Load() - inH)
	c.ackLocked(uint32(h))
	resend := c.sm.unacked
	c.sm.unacked = nil
	c.sm.enabled = true
	c.sm.replay = true // journaled when first sent
	for _, raw := range resend {
		if err := c.writeLocked(s, raw, true); err != nil {
			c.sm.unacked = append(c.sm.unacked, resend[len(c.sm.unacked):]...)
			c.sm.replay = false
			c.wmu.Unlock()
			return false, err
		}
	}
	c.sm.replay = false
	c.wmu.Unlock()
	if err := c.saveResumed(); err != nil {
		return false, err
	}
	return true, c.install(s, len(resend) > 0)
}

func firstChildName(n *node) string {
	if len(n.kids) > 0 {
		return n.kids[0].name.Local
	}
	return ""
}

// ackRequest is XEP-0198's <r/>.
const ackRequest = `<r xmlns="` + nsSM + `"/>`

func (c *Conn) requestAckLocked(s *stream) error {
	c.sm.sinceReq = 0
	return s.write([]byte(ackRequest))
}

// ackLocked drops the stanzas acknowledged by h.
func (c *Conn) ackLocked(h uint32) {
	n := h - c.sm.acked // wraps mod 2^32 like the counter itself
	switch {
	case n > 1<<31:
		// Behind the last acknowledgement: a stale h. Keep everything
		// rather than drop stanzas the server may not have.
		c.log.Warn("xmppconn: ignoring an ack behind the last one", "h", h, "acked", c.sm.acked, "unacked", len(c.sm.unacked))
		return
	case int64(n) > int64(len(c.sm.unacked)):
		// The server counts more of our stanzas than we hold: a state
		// Resume was given that missed the last ones an earlier Conn
		// sent (a store that took a send without writing it, ResumeStore
		// .Sent). The server got them in order, so it has every one we
		// hold: all are acknowledged and its count is ours from now on.
		// Ignored, every later ack would be too, the queue would only
		// grow, and each resumption would send it all again.
		c.log.Warn("xmppconn: the server acknowledged more stanzas than the resumed state held; taking its count", "h", h, "acked", c.sm.acked, "unacked", len(c.sm.unacked))
		n = uint32(len(c.sm.unacked))
	}
	for i := range n {
		c.sm.unacked[i] = nil
	}
	c.sm.unacked = c.sm.unacked[n:]
	if len(c.sm.unacked) == 0 {
		c.sm.unacked = nil
	}
	c.sm.acked = h
	c.storeAckedLocked(h)
}

// minRefusable is the smallest stanza taken for the cause of a broken
// stream: Prosody does not let c2s_stanza_size_limit go below 10,000
// bytes, so a smaller stanza was not refused for its size.
const minRefusable = 10000

// dropRefused takes out of the XEP-0198 resend queue a stanza the server
// refused, so that it is not sent again after every reconnect. Servers
// close the stream with policy-violation on a stanza over their size
// limit, and the culprit is the largest unacknowledged stanza: the server
// read none of the stanzas from the culprit on, and any of them as large
// would have been refused as well. Dropping it leaves the positions of
// those before it, which are all an ack can still cover, untouched.
//
// The server's error is often lost: it closes the socket with the rest of
// the stanza unread, and the TCP reset that follows discards the error
// before it is read. So when the connection itself broke (no stream error,
// no timeout) twice in a row with the same stanza the largest
// unacknowledged one, it is taken for refused too: at most two breaks,
// instead of one after every reconnect.
func (c *Conn) dropRefused(why error) {
	reason := ""
	switch {
	case errors.Is(why, ErrStreamPolicyViolation):
		reason = "policy-violation"
	case errors.Is(why, &StreamError{}), errors.Is(why, ErrTimeout), errors.Is(why, ErrProtocol), errors.Is(why, ErrStanzaTooLarge):
		// The break has another explanation: another stream error, a
		// silent server, or what the server sent us.
		c.wmu.Lock()
		c.suspect = nil
		c.wmu.Unlock()
		return
	}
	c.wmu.Lock()
	i := -1
	for j, raw := range c.sm.unacked {
		if len(raw) >= minRefusable && (i < 0 || len(raw) > len(c.sm.unacked[i])) {
			i = j
		}
	}
	if i < 0 {
		c.suspect = nil
		c.wmu.Unlock()
		return
	}
	raw := c.sm.unacked[i]
	if reason == "" && c.suspect == &raw[0] {
		reason = "stream_broken"
	}
	if reason == "" {
		c.suspect = &raw[0]
		c.wmu.Unlock()
		return
	}
	c.suspect = nil
	c.sm.unacked = slices.Delete(c.sm.unacked, i, i+1)
	c.wmu.Unlock()
	c.saveState()
	ev := &SendFailed{Bytes: len(raw), Reason: reason}
	if n, err := parseStartTag(stdHeader, raw); err == nil {
		ev.Stanza, ev.To, ev.ID = n.name.Local, n.get("to"), n.get("id")
	}
	c.log.Warn("xmppconn: the server refused a stanza; not sending it again", "reason", reason, "stanza", ev.Stanza, "to", ev.To, "bytes", ev.Bytes)
	c.emit(ev)
}

// handleSM answers the server's ack request and takes its acks; it reports
// false for any other element.
func (c *Conn) handleSM(s *stream, n *node) bool {
	switch {
	case n.is(nsSM, "r"):
		c.wmu.Lock()
		if c.sm.enabled {
			c.writeLocked(s, c.ackElementLocked(), false)
		}
		c.wmu.Unlock()
		return true
	case n.is(nsSM, "a"):
		if h, err := strconv.ParseUint(n.get("h"), 10, 32); err == nil {
			c.wmu.Lock()
			c.ackLocked(uint32(h))
			c.wmu.Unlock()
		}
		return true
	}
	return false
}

// countInbound advances the XEP-0198 inbound counter for a handled stanza.
func (c *Conn) countInbound() {
	c.wmu.Lock()
	if c.sm.enabled {
		c.storeHandledLocked(c.inH.Add(1))
	}
	c.wmu.Unlock()
}
