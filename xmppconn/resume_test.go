package xmppconn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// logStore is a ResumeStore that records its calls, in order with the
// events of a logHandler sharing its log, and can be told to fail.
type logStore struct {
	mu       sync.Mutex
	log      []string
	st       ResumeState
	failH    map[uint32]bool // Handled(h) fails for these h
	failSent bool
}

func (l *logStore) add(s string) {
	l.mu.Lock()
	l.log = append(l.log, s)
	l.mu.Unlock()
}

func (l *logStore) entries() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.log)
}

func (l *logStore) Save(st ResumeState) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.st = st
	l.log = append(l.log, fmt.Sprintf("save id=%s h=%d", st.ID, st.H))
	return nil
}

func (l *logStore) Handled(h uint32) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failH[h] {
		l.log = append(l.log, fmt.Sprintf("handled %d refused", h))
		return errors.New("store down")
	}
	l.st.Handled(h)
	l.log = append(l.log, fmt.Sprintf("handled %d", h))
	return nil
}

func (l *logStore) Sent(raw []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failSent {
		return errors.New("store down")
	}
	l.st.Sent(raw)
	n, _ := parseStartTag(stdHeader, raw)
	l.log = append(l.log, "sent "+n.name.Local+" "+n.get("id"))
	return nil
}

func (l *logStore) Acked(h uint32) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.log = append(l.log, fmt.Sprintf("acked %d", h))
	return l.st.Ack(h)
}

// logHandler writes each message event into the store's log.
type logHandler struct {
	l  *logStore
	ch chanHandler
}

func (h logHandler) HandleEvent(ev Event) {
	if m, ok := ev.(*Message); ok {
		h.l.add("event " + m.ID)
	}
	h.ch <- ev
}

// dialStore is dialScript with store as the Conn's ResumeStore, through
// a fresh login (session "sm1").
func dialStore(t *testing.T, s *scriptServer, h Handler, store ResumeStore, mod ...func(*Config)) (*Conn, *scriptConn) {
	t.Helper()
	withStore := func(c *Config) { c.ResumeStore = store }
	return dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") }, append([]func(*Config){withStore}, mod...)...)
}

// TestResumeStoreOrder: each inbound stanza reaches the Handler before the
// store hears its count, the server is acked only what the store took,
// and a refused count is offered again before the next <a/>.
func TestResumeStoreOrder(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	l := &logStore{failH: map[uint32]bool{3: true}}
	h := logHandler{l: l, ch: make(chanHandler, 100)}
	_, sc := dialStore(t, s, h, l)
	// Login: the fresh session is saved at <enabled/>, then the roster
	// request and the presence (sent right behind it) are journaled, then
	// the roster result counted.
	for i := range 3 {
		sc.write(fmt.Sprintf(`<message from="bob@example.test/x" type="chat" id="m%d"><body>hi</body></message>`, i))
	}
	sc.write(`<r xmlns="urn:xmpp:sm:3"/>`)
	// m0 is 2, m1 is 3 (refused), m2 is 4: the store took 4 again.
	if a := sc.expect("a"); a.get("h") != "4" {
		t.Fatalf("acked h=%s, want 4; store log %q", a.get("h"), l.entries())
	}
	want := []string{
		"save id=sm1 h=0", "sent iq", "sent presence", "handled 1",
		"event m0", "handled 2", "event m1", "handled 3 refused", "event m2", "handled 4",
	}
	got := l.entries()
	for i := range got {
		if strings.HasPrefix(got[i], "sent iq ") {
			got[i] = "sent iq" // the id is random
		}
		got[i] = strings.TrimSuffix(got[i], " ")
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("store and handler calls:\n got %q\nwant %q", got, want)
	}

	// A count refused with nothing after it is offered again on <r/>;
	// until the store takes it, the server hears the last one it took.
	l.mu.Lock()
	l.failH[5] = true
	l.mu.Unlock()
	sc.write(`<message from="bob@example.test/x" type="chat" id="m3"><body>hi</body></message><r xmlns="urn:xmpp:sm:3"/>`)
	if a := sc.expect("a"); a.get("h") != "4" {
		t.Fatalf("acked h=%s with the store refusing 5, want 4", a.get("h"))
	}
	l.mu.Lock()
	delete(l.failH, 5)
	l.mu.Unlock()
	sc.write(`<r xmlns="urn:xmpp:sm:3"/>`)
	if a := sc.expect("a"); a.get("h") != "5" {
		t.Fatalf("acked h=%s once the store took 5, want 5", a.get("h"))
	}
}

// TestResumeStoreSentFails: a stanza the store cannot journal is neither
// written nor kept, and Send says why.
func TestResumeStoreSentFails(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	l := &logStore{}
	c, sc := dialStore(t, s, make(chanHandler, 100), l)
	l.mu.Lock()
	l.failSent = true
	l.mu.Unlock()
	if _, err := c.Send(t.Context(), Message{To: "bob@example.test", ID: "lost", Body: "x"}); !errors.Is(err, ErrResumeStore) {
		t.Fatalf("Send with the store down = %v, want ErrResumeStore", err)
	}
	l.mu.Lock()
	l.failSent = false
	l.mu.Unlock()
	if _, err := c.Send(t.Context(), Message{To: "bob@example.test", ID: "kept", Body: "x"}); err != nil {
		t.Fatal(err)
	}
	if id := sc.expect("message").get("id"); id != "kept" {
		t.Fatalf("server got message %q, want only kept", id)
	}
	if st := c.ResumeState(); len(st.Unacked) != 3 { // roster get, presence, kept
		t.Fatalf("%d unacked, want 3", len(st.Unacked))
	}
}

// TestResumeJournalWhileDown: with a store, a message sent while the
// stream is down is journaled at once (another process resuming the
// session sends it), and this Conn sends it after resuming.
func TestResumeJournalWhileDown(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	l := &logStore{}
	h := make(chanHandler, 100)
	c, sc := dialStore(t, s, h, l)
	sc.write(`<a xmlns="urn:xmpp:sm:3" h="2"/>`) // roster get and presence
	sc.nc.Close()
	h.wait(t, func(ev Event) bool { sc, ok := ev.(*StateChange); return ok && sc.State == StateReconnecting })
	if _, err := c.Send(t.Context(), Message{To: "bob@example.test", ID: "q1", Body: "x"}); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	stored := len(l.st.Unacked)
	l.mu.Unlock()
	if stored != 1 {
		t.Fatalf("store holds %d unacked after a send while down, want 1: %q", stored, l.entries())
	}
	sc2 := s.accept()
	sc2.login()
	if r := sc2.expect("resume"); r.get("h") != "1" {
		t.Fatalf("resume h=%s, want 1", r.get("h"))
	}
	sc2.write(`<resumed xmlns="urn:xmpp:sm:3" previd="sm1" h="2"/>`)
	if id := sc2.expect("message").get("id"); id != "q1" {
		t.Fatalf("after resuming the server got %q, want q1", id)
	}
	sc2.write(`<a xmlns="urn:xmpp:sm:3" h="3"/>`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.mu.Lock()
		n := len(l.st.Unacked)
		l.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store still holds %d unacked after the server acked all: %q", n, l.entries())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDetachSilent: Detach writes neither unavailable presence nor the
// stream close: the server sees the connection drop, after an ack.
func TestDetachSilent(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	l := &logStore{}
	c, sc := dialStore(t, s, make(chanHandler, 100), l)
	sc.write(`<message from="bob@example.test/x" type="chat" id="m0"><body>hi</body></message>`)
	time.Sleep(50 * time.Millisecond)
	st, err := c.Detach(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.ID != "sm1" || st.H != 2 || st.JID != "alice@example.test/web" {
		t.Fatalf("Detach state %+v", st)
	}
	if a := sc.expect("a"); a.get("h") != "2" {
		t.Fatalf("final ack h=%s, want 2", a.get("h"))
	}
	sc.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	kind, _, err := sc.f.next()
	if err == nil {
		t.Fatalf("after Detach the server read %v, want the connection dropped", kind)
	}
	if !errors.Is(c.Err(), ErrDetached) {
		t.Fatalf("Err = %v, want ErrDetached", c.Err())
	}
	if _, err := c.Detach(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Detach = %v, want ErrClosed", err)
	}
}

// TestBeforeReconnectRefuses: a Conn whose reconnection is refused (its
// session is owned elsewhere now) stops as detached without connecting.
func TestBeforeReconnectRefuses(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	asked := make(chan struct{}, 1)
	notOwner := errors.New("owned by another node")
	c, sc := dialStore(t, s, make(chanHandler, 100), &logStore{}, func(cfg *Config) {
		cfg.BeforeReconnect = func(ctx context.Context) error {
			asked <- struct{}{}
			return notOwner
		}
	})
	sc.nc.Close() // the server closed us: another connection resumed the session
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Conn still running after BeforeReconnect refused")
	}
	if len(asked) != 1 {
		t.Fatalf("BeforeReconnect asked %d times, want 1", len(asked))
	}
	if err := c.Err(); !errors.Is(err, ErrDetached) || !errors.Is(err, notOwner) {
		t.Fatalf("Err = %v, want ErrDetached and the refusal", err)
	}
	select {
	case extra := <-s.conns:
		extra.nc.Close()
		t.Fatal("the Conn connected again after the refusal")
	case <-time.After(200 * time.Millisecond):
	}
}

// TestResumeStateAck: Ack trims by position, across the counter's wrap,
// refuses an h behind the last one, and takes an h beyond what the state
// holds (it missed stanzas the server got) as acknowledging them all.
func TestResumeStateAck(t *testing.T) {
	raw := func(id string) []byte { return []byte(`<message id="` + id + `"/>`) }
	st := ResumeState{Acked: 1<<32 - 2, Unacked: [][]byte{raw("a"), raw("b"), raw("c")}}
	if err := st.Ack(1<<32 - 3); !errors.Is(err, ErrResumeState) {
		t.Fatalf("Ack behind = %v", err)
	}
	if err := st.Ack(0); err != nil { // wraps: a and b acked
		t.Fatal(err)
	}
	if len(st.Unacked) != 1 || string(st.Unacked[0]) != string(raw("c")) || st.Acked != 0 {
		t.Fatalf("after Ack(0): acked %d, unacked %q", st.Acked, st.Unacked)
	}
	if err := st.Ack(4); err != nil { // c and three stanzas the state missed
		t.Fatalf("Ack beyond = %v", err)
	}
	if len(st.Unacked) != 0 || st.Acked != 4 {
		t.Fatalf("after Ack(4): acked %d, unacked %q", st.Acked, st.Unacked)
	}
}

// FuzzParseResumeState: any bytes give a state or ErrResumeState, never a
// panic, and a state accepted survives its JSON round trip.
func FuzzParseResumeState(f *testing.F) {
	good := ResumeState{V: 1, JID: "alice@example.test/web", ID: "abc", H: 7, Acked: 3,
		Unacked: [][]byte{[]byte(`<message to="bob@example.test" id="x"><body>hi</body></message>`)},
		Rooms:   []ResumeRoom{{Room: "room@conference.example.test", Nick: "alice", Since: time.Unix(1700000000, 0).UTC()}},
		Show:    "away", Status: "lunch"}
	b, _ := json.Marshal(good)
	f.Add(b)
	f.Add([]byte(`{"v":1,"jid":"a@b/c","id":"","h":4294967295,"acked":0,"unacked":null}`))
	f.Add([]byte(`{"v":1,"jid":"a@b/c","unacked":["PHg+"]}`))
	f.Add([]byte(`{"v":1,"jid":"a@b/c","rooms":[{"room":"r@c","nick":""}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseResumeState(b)
		if err != nil {
			if !errors.Is(err, ErrResumeState) {
				t.Fatalf("error %v does not wrap ErrResumeState", err)
			}
			return
		}
		again, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		st2, err := ParseResumeState(again)
		if err != nil {
			t.Fatalf("accepted state does not survive its round trip: %v\n%s", err, again)
		}
		if st2.JID != st.JID || st2.H != st.H || len(st2.Unacked) != len(st.Unacked) || len(st2.Rooms) != len(st.Rooms) {
			t.Fatalf("round trip changed the state: %+v -> %+v", st, st2)
		}
	})
}
