package xmppconn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Namespaces of message history.
const (
	nsMAM2 = "urn:xmpp:mam:2" // XEP-0313
	nsMAM1 = "urn:xmpp:mam:1" // XEP-0313 before 0.6, e.g. older ejabberd
	nsRSM  = "http://jabber.org/protocol/rsm"
)

// The archive hooks into the core: results are consumed before the
// message dispatch and kept from the Tap.
func init() {
	register(&feature{
		name: "mam",
		inbound: func(c *Conn, _ *stream, n *node) bool {
			if n.name.Local != "message" {
				return false
			}
			r := mamResult(n)
			if r == nil {
				return false
			}
			// Archive results belong to the query that asked for them and
			// are never incoming messages, whoever sent them.
			c.handleMAMResult(n, r)
			return true
		},
		owns: func(c *Conn, n *node) bool {
			r := mamResult(n)
			if r == nil {
				return false
			}
			c.mu.Lock()
			_, own := c.mam[r.get("queryid")]
			c.mu.Unlock()
			return own
		},
	})
}

// History page sizes.
const (
	// DefaultHistoryMax is the page size when HistoryQuery.Max is 0.
	DefaultHistoryMax = 50
	// MaxHistoryMax is the largest page asked for, and the bound on the
	// results kept per query whatever the server sends.
	MaxHistoryMax = 100
)

// HistoryQuery selects one page of a XEP-0313 message archive, paged with
// XEP-0059 result set management.
type HistoryQuery struct {
	// Room is the bare JID of a room whose archive is read (MUC MAM); ""
	// reads the user's own archive.
	Room string
	// With keeps only the conversation with this JID (bare for the
	// user's archive).
	With string
	// Start and End bound the messages' archive time, inclusive; zero is
	// unbounded.
	Start, End time.Time
	// After asks for the page after this archive id (paging forwards).
	After string
	// Before asks for the page before this archive id (paging backwards).
	Before string
	// Last asks for the newest page, before Before or, when Before is
	// empty, at the end of the archive (XEP-0059 <before/>).
	Last bool
	// Max is the page size: 0 is DefaultHistoryMax, at most MaxHistoryMax.
	// Servers may return fewer (Prosody at most 50).
	Max int
}

// ArchivedMessage is one message of an archive: the Message as archived
// (its ID is the one its sender gave it), read by the same parseMessage
// as a live one, and where the archive keeps it.
type ArchivedMessage struct {
	Message
	ArchiveID string    // the archive's id for it (XEP-0359 stanza-id)
	Time      time.Time // when the server archived it
}

// HistoryPage is the answer to a HistoryQuery: the messages oldest first.
type HistoryPage struct {
	Messages []ArchivedMessage
	// Complete is true when this page reaches the end of the archive in
	// the direction paged (the oldest message when paging backwards, the
	// newest when paging forwards).
	Complete bool
	// First and Last are the archive ids of the page's first and last
	// result, to page on with Before=First or After=Last; "" when empty.
	First, Last string
	// Count is the number of matching messages the server reported, -1 if
	// it did not.
	Count int
}

// mamQuery collects the results of one archive query until its IQ result.
type mamQuery struct {
	archive string // sender results must come from: "" own account, else the room's bare JID
	ns      string
	last    bool // paging backwards: keep the newest results
	max     int
	msgs    []ArchivedMessage
	over    bool // more results came than max
}

// History reads one page of an archive (XEP-0313 urn:xmpp:mam:2, or
// urn:xmpp:mam:1 when the server knows only that). Result messages are
// accepted only from the archive itself (the user's bare JID, or the room)
// and for this query's id; they never reach the Handler. A server or room
// without an archive gives ErrUnsupported.
func (c *Conn) History(ctx context.Context, q HistoryQuery) (HistoryPage, error) {
	if q.Max < 0 || q.Max > MaxHistoryMax {
		return HistoryPage{}, fmt.Errorf("%w: history page size %d out of 0..%d", ErrInvalidArgument, q.Max, MaxHistoryMax)
	}
	if q.Max == 0 {
		q.Max = DefaultHistoryMax
	}
	if !q.Start.IsZero() && !q.End.IsZero() && q.End.Before(q.Start) {
		return HistoryPage{}, fmt.Errorf("%w: history end before start", ErrInvalidArgument)
	}
	if q.Before != "" {
		q.Last = true
	}
	if len(q.After) > 256 || len(q.Before) > 256 {
		return HistoryPage{}, fmt.Errorf("%w: archive id longer than 256 bytes", ErrInvalidArgument)
	}
	archive := ""
	if q.Room != "" {
		j, err := ParseJID(q.Room)
		if err != nil {
			return HistoryPage{}, err
		}
		if j.Resource != "" || j.Local == "" {
			return HistoryPage{}, fmt.Errorf("%w: room %q is not a bare room JID", ErrInvalidJID, q.Room)
		}
		archive = j.String()
		if j == c.own {
			archive = ""
		}
	}
	if q.With != "" {
		j, err := ParseJID(q.With)
		if err != nil {
			return HistoryPage{}, err
		}
		q.With = j.String()
	}
	page, err := c.history(ctx, nsMAM2, archive, q)
	if notSupported(err) {
		page, err = c.history(ctx, nsMAM1, archive, q)
		if notSupported(err) {
			return HistoryPage{}, fmt.Errorf("%w: message archive (XEP-0313): %w", ErrUnsupported, err)
		}
	}
	return page, err
}

// notSupported reports whether err says the archive (or the namespace
// asked for) does not exist.
func notSupported(err error) bool {
	return errors.Is(err, ErrServiceUnavailable) || errors.Is(err, ErrFeatureNotImplemented)
}

func (c *Conn) history(ctx context.Context, ns, archive string, q HistoryQuery) (HistoryPage, error) {
	qid := c.newID()
	mq := &mamQuery{archive: archive, ns: ns, last: q.Last, max: q.Max}
	c.mu.Lock()
	if c.mam == nil {
		c.mam = map[string]*mamQuery{}
	}
	c.mam[qid] = mq
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.mam = deleteKey(c.mam, qid)
		c.mu.Unlock()
	}()
	n, err := c.iq(ctx, "set", archive, encodeMAMQuery(ns, qid, q))
	if err != nil {
		return HistoryPage{}, err
	}
	c.mu.Lock()
	c.mam = deleteKey(c.mam, qid)
	msgs, over := mq.msgs, mq.over
	c.mu.Unlock()
	page := HistoryPage{Count: -1}
	fin := n.child(ns, "fin")
	if fin == nil {
		return HistoryPage{}, fmt.Errorf("%w: archive query answered without <fin/>", ErrProtocol)
	}
	page.Complete = fin.get("complete") == "true" || fin.get("complete") == "1"
	if set := fin.child(nsRSM, "set"); set != nil {
		page.First = set.child(nsRSM, "first").textOrEmpty()
		page.Last = set.child(nsRSM, "last").textOrEmpty()
		if v, err := strconv.Atoi(set.child(nsRSM, "count").textOrEmpty()); err == nil && v >= 0 {
			page.Count = v
		}
	}
	if over {
		// The server sent more than asked: the page is what was kept, and
		// paging on from its ends leaves no gap.
		page.Complete = false
	}
	if over || page.First == "" && len(msgs) > 0 {
		page.First, page.Last = msgs[0].ArchiveID, msgs[len(msgs)-1].ArchiveID
	}
	page.Messages = make([]ArchivedMessage, 0, len(msgs))
	for _, m := range msgs {
		if m.Body != "" || m.Subject != "" {
			page.Messages = append(page.Messages, m)
		}
	}
	return page, nil
}

// encodeMAMQuery renders the <query/> of an archive request.
func encodeMAMQuery(ns, qid string, q HistoryQuery) []byte {
	var b bytes.Buffer
	b.WriteString(`<query xmlns="` + ns + `"`)
	attr(&b, "queryid", qid)
	b.WriteString(`><x xmlns="` + nsData + `" type="submit"><field var="FORM_TYPE" type="hidden"><value>` + ns + `</value></field>`)
	field := func(name, value string) {
		if value == "" {
			return
		}
		b.WriteString(`<field var="` + name + `"><value>`)
		esc(&b, value)
		b.WriteString(`</value></field>`)
	}
	field("with", q.With)
	if !q.Start.IsZero() {
		field("start", q.Start.UTC().Format(time.RFC3339Nano))
	}
	if !q.End.IsZero() {
		field("end", q.End.UTC().Format(time.RFC3339Nano))
	}
	b.WriteString(`</x><set xmlns="` + nsRSM + `"><max>` + strconv.Itoa(q.Max) + `</max>`)
	if q.After != "" {
		b.WriteString(`<after>`)
		esc(&b, q.After)
		b.WriteString(`</after>`)
	}
	if q.Last {
		b.WriteString(`<before>`)
		esc(&b, q.Before)
		b.WriteString(`</before>`)
	}
	b.WriteString(`</set></query>`)
	return b.Bytes()
}

// mamResult returns the XEP-0313 <result/> a message carries, if any.
func mamResult(n *node) *node {
	if r := n.child(nsMAM2, "result"); r != nil {
		return r
	}
	return n.child(nsMAM1, "result")
}

// handleMAMResult files an archive result message with its query. Results
// for no running query, of the wrong namespace, or from anyone but the
// archive (a contact forging history) are dropped.
func (c *Conn) handleMAMResult(n, r *node) {
	qid := r.get("queryid")
	from := n.get("from")
	c.mu.Lock()
	defer c.mu.Unlock()
	mq := c.mam[qid]
	if mq == nil || mq.ns != r.name.Space || !c.fromArchive(mq.archive, from) {
		c.log.Debug("xmppconn: dropping archive result", "from", from, "known_query", mq != nil)
		return
	}
	fwd := r.child(nsForward, "forwarded")
	inner := fwd.child("", "message")
	if inner == nil {
		return
	}
	msg, _, _ := parseMessage(inner)
	m := ArchivedMessage{Message: msg, ArchiveID: r.get("id"), Time: parseDelay(fwd)}
	if m.Time.IsZero() {
		m.Time = m.Delay
	}
	if len(mq.msgs) >= mq.max {
		mq.over = true
		if !mq.last {
			return // paging forwards: keep the oldest max
		}
		copy(mq.msgs, mq.msgs[1:]) // paging backwards: keep the newest max
		mq.msgs = mq.msgs[:len(mq.msgs)-1]
	}
	mq.msgs = append(mq.msgs, m)
}

// fromArchive reports whether from may send results of archive ("" = the
// user's own: no from, or the bare JID).
func (c *Conn) fromArchive(archive, from string) bool {
	if archive == "" {
		return from == "" || c.fromOwnBare(from)
	}
	j, err := ParseJID(from)
	return err == nil && j.String() == archive
}
