package xmppconn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// This file lets a Conn's XEP-0198 session outlive its process: a
// ResumeStore learns every change of the session's state as it happens,
// another process loads that state and Resume continues the very same
// server session on a new connection, and Detach lets go of a session
// without ending it so that another process can take it over.

// ResumeStateVersion is the ResumeState.V this package writes and reads.
const ResumeStateVersion = 1

// Bounds on a ResumeState, which may come from storage shared with other
// processes: a state beyond them is refused (ErrResumeState).
const (
	maxResumeUnacked = 10000 // Prosody keeps 500 (smacks_max_queue_size)
	maxResumeRooms   = 1000
	maxResumeID      = 1024
	maxResumeStatus  = 4096
)

// ResumeState is what it takes to continue a XEP-0198 session from another
// Conn, in this process or another: the session's identity, the inbound
// count the server was told, and the outbound stanzas it has not
// acknowledged, in order. Its JSON form is what a store keeps
// (encoding/json; ParseResumeState reads it back and checks it).
//
// The outbound positions follow XEP-0198's counter: Unacked[i] is the
// stanza number Acked+1+i of the session (mod 2^32). The server's h in
// <resumed/> says how many of them it got; the rest are sent again.
type ResumeState struct {
	V   int    `json:"v"`   // ResumeStateVersion
	JID string `json:"jid"` // full JID bound for the session
	// ID is the server's resumption id (<enabled id>); "" when the session
	// cannot be resumed (the server offers no XEP-0198 or no resumption):
	// Resume then logs in afresh.
	ID string `json:"id"`
	// Location is the server's preferred address for resuming
	// (<enabled location>), if it gave one. It is kept for the caller:
	// Resume dials Config.Addr.
	Location string `json:"location,omitempty"`
	// Max is the longest the server keeps the session after the connection
	// is lost, in seconds (<enabled max>); 0 if it did not say.
	Max int `json:"max,omitempty"`
	// H is the number of inbound stanzas handled (delivered to the
	// Handler) and acknowledged, the h sent in <resume/>.
	H uint32 `json:"h"`
	// Acked is the server's last outbound acknowledgement (its h).
	Acked uint32 `json:"acked"`
	// Unacked are the outbound stanzas sent (or accepted for sending)
	// after Acked, in order, as raw XML.
	Unacked [][]byte `json:"unacked"`
	// Rooms are the group chat rooms the session is in: a resumed Conn
	// knows them (their groupchat messages are delivered), a fresh login
	// joins them again.
	Rooms []ResumeRoom `json:"rooms,omitempty"`
	// Show and Status are the user's broadcast presence, sent again by a
	// fresh login (not by a resumption: the server kept it).
	Show   Show   `json:"show,omitempty"`
	Status string `json:"status,omitempty"`
	// Unavailable says the user's last broadcast presence was unavailable:
	// a fresh login then sends no presence.
	Unavailable bool `json:"unavailable,omitempty"`
}

// ResumeRoom is a group chat room of a ResumeState.
type ResumeRoom struct {
	Room     string `json:"room"` // bare room JID
	Nick     string `json:"nick"`
	Password string `json:"password,omitempty"`
	// Since is when the newest message of the room was seen: a fresh login
	// asks the room for the history since shortly before.
	Since time.Time `json:"since,omitzero"`
}

// ResumeStore keeps a Conn's XEP-0198 state where another process can
// read it (Config.ResumeStore). The Conn calls it synchronously, one call
// at a time (never concurrently for one Conn), from the goroutine that
// changes the state, and each call is one increment: a store never has to
// rewrite the whole state per stanza. A store that applies the calls to a
// ResumeState in order (ResumeState's Handled, Sent and Ack do exactly
// that) holds at every moment a state Resume can continue.
//
// The Conn keeps two promises with it. Inbound: it acknowledges to the
// server (<a h>, <resume h>) only a count the store accepted, so the
// stored h never falls behind what the server was told (Prosody destroys a
// session whose client h goes back). Outbound: a stanza is journaled
// before it is written, so the store holds every stanza the server may
// count.
//
// Each call holds the Conn's write lock: sends wait for it, so a store
// bounds its own I/O (a timeout) and must not call the Conn's methods.
type ResumeStore interface {
	// Save replaces the whole state: when a session starts (a fresh
	// login's <enabled/>, with Unacked empty; a session without
	// resumption has ID ""), after a resumption if an earlier Save
	// failed, when a stanza the server refused leaves Unacked
	// (SendFailed), and when the rooms or the broadcast presence change.
	// An error during login fails that login (Dial, Resume or a
	// reconnection, which retries, authenticating again); later ones are
	// logged and the next change saves again. So a store that only cannot
	// write now (its storage slow or unreachable) does better to keep st
	// and write it once it can, and return nil: the Conn takes nil as
	// saved, and does not offer st again after a resumption.
	Save(st ResumeState) error
	// Handled records that h inbound stanzas have been handled: the
	// Handler returned for every event of the stanza that made it h. It
	// is called once per inbound stanza, right after the Handler, so a
	// store can write the stanza's events and h in one atomic step (keep
	// the events HandleEvent gave, write them with h): then a crash
	// neither loses nor repeats one. After an error the Conn goes on, acks
	// only the last h the store accepted, and calls Handled with the next
	// h (covering the stanzas whose call failed) after the next stanza or
	// before answering the server's <r/>.
	Handled(h uint32) error
	// Sent appends raw, a stanza about to be written (or, while the
	// stream is down, accepted for sending later) to the unacknowledged
	// ones. After an error the stanza is neither written nor kept, and
	// the send fails with an error wrapping ErrResumeStore.
	Sent(raw []byte) error
	// Acked records the server's acknowledgement h: the stanzas up to it
	// leave Unacked. An error is logged: the stored state then keeps
	// stanzas the server has, which a resumption drops by position.
	Acked(h uint32) error
}

// ParseResumeState decodes a ResumeState from its JSON form and checks it
// (Validate). Its errors wrap ErrResumeState.
func ParseResumeState(b []byte) (ResumeState, error) {
	var st ResumeState
	if err := json.Unmarshal(b, &st); err != nil {
		return ResumeState{}, fmt.Errorf("%w: %w", ErrResumeState, err)
	}
	if err := st.Validate(); err != nil {
		return ResumeState{}, err
	}
	return st, nil
}

// Validate checks that st is a state Resume may continue: the version
// known, a full JID, a resumption id of sane length, at most 10,000
// unacknowledged stanzas, each one well-formed message, presence or iq of
// at most DefaultMaxStanzaSize bytes, valid rooms and presence. Its errors
// wrap ErrResumeState.
func (st *ResumeState) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrResumeState}, a...)...)
	}
	if st.V != ResumeStateVersion {
		return bad("version %d, want %d", st.V, ResumeStateVersion)
	}
	j, err := ParseJID(st.JID)
	if err != nil || j.Local == "" || j.Resource == "" {
		return bad("jid %q is not a full JID", st.JID)
	}
	if len(st.ID) > maxResumeID {
		return bad("resumption id of %d bytes", len(st.ID))
	}
	if st.Max < 0 {
		return bad("max %d is negative", st.Max)
	}
	if len(st.Unacked) > maxResumeUnacked {
		return bad("%d unacknowledged stanzas, over %d", len(st.Unacked), maxResumeUnacked)
	}
	for i, raw := range st.Unacked {
		if _, err := ParseStanza(raw, DefaultMaxStanzaSize); err != nil {
			return bad("unacknowledged stanza %d: %w", i, err)
		}
	}
	if len(st.Rooms) > maxResumeRooms {
		return bad("%d rooms, over %d", len(st.Rooms), maxResumeRooms)
	}
	for _, r := range st.Rooms {
		room, err := roomJID(r.Room)
		if err != nil || room != r.Room {
			return bad("room %q is not a bare room JID", r.Room)
		}
		if full, err := ParseJID(room + "/" + r.Nick); err != nil || r.Nick == "" || full.Resource != r.Nick {
			return bad("nickname %q in room %s", r.Nick, r.Room)
		}
	}
	if _, err := ParseShow(string(st.Show)); err != nil {
		return bad("%w", err)
	}
	if len(st.Status) > maxResumeStatus {
		return bad("status of %d bytes", len(st.Status))
	}
	return nil
}

// Handled applies ResumeStore.Handled: h is the inbound count.
func (st *ResumeState) Handled(h uint32) { st.H = h }

// Sent applies ResumeStore.Sent: raw joins the unacknowledged stanzas.
func (st *ResumeState) Sent(raw []byte) { st.Unacked = append(st.Unacked, raw) }

// Ack applies ResumeStore.Acked: the stanzas up to h leave Unacked. An h
// behind Acked (by less than 2^31, the counter wrapping) is refused
// (ErrResumeState) and changes nothing. An h beyond the stanzas sent
// means the state missed stanzas the server got (the Conn then takes the
// server's count, see ackLocked): every one is acknowledged and Acked
// becomes h.
func (st *ResumeState) Ack(h uint32) error {
	n := h - st.Acked // the counter wraps mod 2^32
	if n > 1<<31 {
		return fmt.Errorf("%w: ack %d behind %d", ErrResumeState, h, st.Acked)
	}
	n = min(n, uint32(len(st.Unacked)))
	// Move the rest to the front: the array is reused, not reallocated
	// as appends reach its end.
	m := copy(st.Unacked, st.Unacked[n:])
	clear(st.Unacked[m:])
	st.Unacked = st.Unacked[:m]
	st.Acked = h
	return nil
}

// ResumeState returns a snapshot of the Conn's XEP-0198 state, as a
// ResumeStore holding every call so far would have it. Its Unacked share
// the Conn's stanza bytes, which are never modified. ID is "" while no
// resumable session is established.
func (c *Conn) ResumeState() ResumeState {
	rooms := c.resumeRooms()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.resumeStateLocked(rooms)
}

func (c *Conn) resumeRooms() []ResumeRoom {
	c.mucMu.Lock()
	defer c.mucMu.Unlock()
	var rooms []ResumeRoom
	for _, r := range c.rooms {
		nick := r.nick
		if nick == "" && r.join != nil {
			nick = r.join.nick
		}
		rooms = append(rooms, ResumeRoom{Room: r.jid, Nick: nick, Password: r.password, Since: r.last})
	}
	return rooms
}

func (c *Conn) resumeStateLocked(rooms []ResumeRoom) ResumeState {
	p := c.currentPresence()
	st := ResumeState{
		V:           ResumeStateVersion,
		JID:         c.JID(),
		Location:    c.sm.location,
		Max:         c.sm.max,
		H:           c.ackableH(),
		Acked:       c.sm.acked,
		Unacked:     append([][]byte{}, c.sm.unacked...),
		Rooms:       rooms,
		Show:        p.Show,
		Status:      p.Status,
		Unavailable: p.Type == "unavailable",
	}
	st.ID = c.sm.id
	return st
}

// saveFresh saves the state of a session a fresh login just started.
func (c *Conn) saveFresh() error {
	if c.cfg.ResumeStore == nil {
		return nil
	}
	rooms := c.resumeRooms()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.storeSaveLocked(rooms)
}

// saveResumed saves the whole state after a resumption when an earlier
// Save failed: the store may still hold another session's.
func (c *Conn) saveResumed() error {
	if c.cfg.ResumeStore == nil {
		return nil
	}
	rooms := c.resumeRooms()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.sm.unsaved {
		return nil
	}
	return c.storeSaveLocked(rooms)
}

// journalLocked accepts a stanza while the stream is down: with a
// ResumeStore it joins the unacknowledged stanzas at once (journaled, so
// another process resuming the session sends it), bounded by MaxQueue.
func (c *Conn) journalLocked(raw []byte) error {
	if len(c.sm.unacked) >= c.cfg.MaxQueue {
		return ErrNotConnected
	}
	if err := c.storeSentLocked(raw); err != nil {
		return err
	}
	c.sm.unacked = append(c.sm.unacked, raw)
	return nil
}

// ackableH is the inbound count the server may be told: with a
// ResumeStore, the last one it accepted.
func (c *Conn) ackableH() uint32 {
	if c.cfg.ResumeStore != nil {
		return c.sm.savedH
	}
	return c.inH.Load()
}

// ackElement is the <a/> acknowledging what may be acknowledged. With a
// ResumeStore it first offers the store a count it refused before.
func (c *Conn) ackElementLocked() []byte {
	if c.cfg.ResumeStore != nil && c.sm.savedH != c.inH.Load() {
		c.storeHandledLocked(c.inH.Load())
	}
	return []byte(`<a xmlns="` + nsSM + `" h="` + strconv.FormatUint(uint64(c.ackableH()), 10) + `"/>`)
}

// storeHandledLocked reports the inbound count h to the store.
func (c *Conn) storeHandledLocked(h uint32) {
	st := c.cfg.ResumeStore
	if st == nil || c.sm.closed {
		return
	}
	if err := st.Handled(h); err != nil {
		if !c.sm.storeFailing {
			c.log.Warn("xmppconn: resume store refused the inbound count; acknowledging only what it holds", "h", h, "stored", c.sm.savedH, "err", err)
		}
		c.sm.storeFailing = true
		return
	}
	c.sm.storeFailing = false
	c.sm.savedH = h
}

// storeSentLocked journals an outbound stanza before it is written.
func (c *Conn) storeSentLocked(raw []byte) error {
	st := c.cfg.ResumeStore
	if st == nil || c.sm.closed || c.sm.replay || !c.sm.enabled {
		return nil
	}
	if err := st.Sent(raw); err != nil {
		return fmt.Errorf("%w: %w", ErrResumeStore, err)
	}
	return nil
}

// storeAckedLocked reports the server's acknowledgement h to the store.
func (c *Conn) storeAckedLocked(h uint32) {
	st := c.cfg.ResumeStore
	if st == nil || c.sm.closed {
		return
	}
	if err := st.Acked(h); err != nil {
		c.log.Warn("xmppconn: resume store refused an acknowledgement", "h", h, "err", err)
	}
}

// storeSaveLocked saves the whole state; rooms come from resumeRooms,
// taken before wmu.
func (c *Conn) storeSaveLocked(rooms []ResumeRoom) error {
	st := c.cfg.ResumeStore
	if st == nil || c.sm.closed {
		return nil
	}
	if err := st.Save(c.resumeStateLocked(rooms)); err != nil {
		c.sm.unsaved = true
		return fmt.Errorf("%w: %w", ErrResumeStore, err)
	}
	c.sm.unsaved = false
	return nil
}

// saveState saves the whole state after a change of rooms or presence,
// when a session is established; an error is logged.
func (c *Conn) saveState() {
	if c.cfg.ResumeStore == nil {
		return
	}
	rooms := c.resumeRooms()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.sm.enabled {
		return
	}
	if err := c.storeSaveLocked(rooms); err != nil {
		c.log.Warn("xmppconn: saving the resume state failed", "err", err)
	}
}

// Resume continues, on a new connection, the XEP-0198 session st describes,
// which another Conn (of this process or another) left: it connects,
// authenticates with cfg's credentials, sends <resume/> with st's id and
// count and, when the server resumes, sends again the stanzas of
// st.Unacked the server did not get. Nothing is lost or repeated in either
// direction, and contacts see no presence change.
//
// When the server refuses (the session timed out, was closed, or st's
// count does not match its own), Resume logs in afresh, binds st's
// resource, sends st's presence, joins st's rooms and sends st.Unacked
// again: the Conn then reports Resumed() false and its first StateChange
// (online) has ContinuityLost set, as after a reconnection that could not
// resume. A state without ID is logged in afresh the same way.
//
// st must pass Validate and be for cfg's account (and cfg.Resource, if
// set): otherwise Resume returns an error wrapping ErrResumeState and
// connects nowhere. Other errors are Dial's. A Conn whose previous
// connection is still open (a process that froze) loses it: the server
// closes it when the session is resumed.
func Resume(ctx context.Context, cfg Config, st ResumeState) (*Conn, error) {
	return resume(ctx, cfg, st, nil)
}

// resume is Resume, on warm's connection first when it is not nil
// (Warm.Resume).
func resume(ctx context.Context, cfg Config, st ResumeState, warm *stream) (*Conn, error) {
	if err := st.Validate(); err != nil {
		return nil, err
	}
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	j, _ := ParseJID(st.JID) // checked by Validate
	if j.Bare() != (JID{Local: cfg.User, Domain: cfg.Domain}) {
		return nil, fmt.Errorf("%w: the state is for %s, not %s@%s", ErrResumeState, j.Bare(), cfg.User, cfg.Domain)
	}
	if cfg.Resource != "" && cfg.Resource != j.Resource {
		return nil, fmt.Errorf("%w: the state is for resource %q, not %q", ErrResumeState, j.Resource, cfg.Resource)
	}
	for _, raw := range st.Unacked {
		if len(raw) > cfg.MaxSendSize {
			return nil, fmt.Errorf("%w: an unacknowledged stanza of %d bytes, over MaxSendSize %d", ErrResumeState, len(raw), cfg.MaxSendSize)
		}
	}
	cfg.Resource = j.Resource
	c := newConn(cfg)
	full := j.String()
	c.jid.Store(&full)
	c.sm = smState{
		id:       st.ID,
		location: st.Location,
		max:      st.Max,
		acked:    st.Acked,
		savedH:   st.H,
		unacked:  append([][]byte(nil), st.Unacked...),
		unsaved:  true, // the store may not hold st: saved once resumed
	}
	c.inH.Store(st.H)
	p := Presence{Show: st.Show, Status: st.Status}
	if st.Unavailable {
		p.Type = "unavailable"
	}
	c.lastShown.Store(&p)
	c.presence = Presence{Show: st.Show, Status: st.Status}
	for _, r := range st.Rooms {
		if c.rooms == nil {
			c.rooms = map[string]*mucRoom{}
		}
		last := r.Since
		if last.IsZero() {
			last = time.Now()
		}
		c.rooms[r.Room] = &mucRoom{jid: r.Room, nick: r.Nick, password: r.Password, joined: true, occupants: map[string]Occupant{}, last: last}
	}
	c.continuing = true
	c.warm = warm
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// retryResume makes a second attempt after Resume's first one failed
// without a refusal: Prosody 0.12 answers a <resume/> whose h is ahead of
// what it sent by closing the connection, sometimes before its <failed/>
// is read. The second attempt is then refused cleanly (the session is
// gone) and logs in afresh; after a mere network error it resumes.
func (c *Conn) retryResume(ctx context.Context, why error) (*stream, bool, error) {
	c.log.Info("xmppconn: resuming the stored session failed; trying once more", "err", why)
	return c.establish(ctx)
}

// gateReconnect asks Config.BeforeReconnect whether to reconnect now. A
// "not now" (an error wrapping ErrNotAdmitted) comes back as notNow, as
// the hook said it, for the loop to wait out and ask again; any other
// refusal stops the Conn as detached, and comes back as stop.
func (c *Conn) gateReconnect() (notNow, stop error) {
	if c.cfg.BeforeReconnect == nil {
		return nil, nil
	}
	refusal := c.cfg.BeforeReconnect(c.closeCtx)
	switch {
	case refusal == nil:
		return nil, nil
	case errors.Is(refusal, ErrNotAdmitted):
		return refusal, nil
	}
	c.detached.Store(true)
	c.log.Info("xmppconn: reconnection refused by BeforeReconnect; detached", "err", refusal)
	return nil, fmt.Errorf("%w: %w", ErrDetached, refusal)
}

// Resumed reports whether the Conn's stream is a resumed XEP-0198 session:
// the one Resume was given, or the previous stream of this Conn after a
// reconnection. False means a fresh login.
func (c *Conn) Resumed() bool { return c.resumed.Load() }

// Detach stops the Conn without ending its session: it acknowledges what
// the store holds, then drops the connection with no unavailable presence
// and no stream close, so that the server keeps the session (hibernating,
// Prosody's smacks_hibernation_time, ejabberd's resume_timeout) for another
// Conn to Resume. It waits (bounded by ctx) for the Conn's goroutine to
// end, so that no event is delivered and no store call made after it
// returns, and returns the final state. The Conn's Err is then
// ErrDetached. When the session cannot be resumed (no XEP-0198
// resumption), the state has no ID and the error is ErrNotResumable: the
// server ends that session as soon as it sees the connection gone.
// Detach after Close or Detach returns ErrClosed. Called from the
// Handler it cannot see the Conn stop (as Close), and returns when ctx
// ends.
func (c *Conn) Detach(ctx context.Context) (ResumeState, error) {
	if c.closing.Swap(true) {
		return ResumeState{}, ErrClosed
	}
	c.detached.Store(true)
	c.closeStart()
	c.wmu.Lock()
	s := c.s
	c.s = nil
	if s != nil && c.sm.enabled {
		dl := time.Now().Add(time.Second)
		if d, ok := ctx.Deadline(); ok && d.Before(dl) {
			dl = d
		}
		s.nc.SetWriteDeadline(dl)
		s.write(c.ackElementLocked())
	}
	c.wmu.Unlock()
	if s != nil {
		// The TCP connection, not the TLS layer: no close_notify either,
		// the server must see a lost connection.
		s.raw.Close()
	}
	var err error
	select {
	case <-c.done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	st := c.ResumeState()
	if err == nil && st.ID == "" {
		err = ErrNotResumable
	}
	return st, err
}

// ErrResumeState, ErrResumeStore, ErrDetached and ErrNotResumable are the
// errors of resuming a session across processes.
var (
	// ErrResumeState: a ResumeState is malformed, beyond bounds, or for
	// another account or resource. Nothing was sent.
	ErrResumeState = errors.New("xmppconn: invalid resume state")
	// ErrResumeStore: the ResumeStore refused a call; the error wraps its
	// own.
	ErrResumeStore = errors.New("xmppconn: resume store failed")
	// ErrDetached: the Conn was stopped by Detach; its session lives on
	// on the server for another Conn to Resume.
	ErrDetached = errors.New("xmppconn: detached")
	// ErrNotResumable: Detach let go of a session the server cannot
	// resume (no XEP-0198 resumption).
	ErrNotResumable = errors.New("xmppconn: session not resumable")
)
