package xmppconn

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

type historyRes struct {
	p   HistoryPage
	err error
}

func runHistory(t *testing.T, c *Conn, q HistoryQuery) <-chan historyRes {
	ch := make(chan historyRes, 1)
	go func() {
		p, err := c.History(t.Context(), q)
		ch <- historyRes{p, err}
	}()
	return ch
}

func mamResultXML(ns, from, qid, id, stamp, inner string) string {
	f := ""
	if from != "" {
		f = ` from="` + from + `"`
	}
	return `<message to="alice@example.test/web"` + f + `><result xmlns="` + ns + `" queryid="` + qid + `" id="` + id + `"><forwarded xmlns="urn:xmpp:forward:0"><delay xmlns="urn:xmpp:delay" stamp="` + stamp + `"/>` + inner + `</forwarded></result></message>`
}

func fieldValue(x *node, name string) string {
	for _, f := range x.kids {
		if f.get("var") == name {
			return f.child("", "value").textOrEmpty()
		}
	}
	return ""
}

// TestHistoryQuery: the query carries the filters and paging; results are
// taken only for the query id and from the user's own account; they never
// become message events, spoofed ones are dropped; fin gives the paging.
func TestHistoryQuery(t *testing.T) {
	s := startScriptServer(t)
	h := make(chanHandler, 100)
	c, sc := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })

	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ch := runHistory(t, c, HistoryQuery{With: "Bob@Example.test", Start: start, End: start.Add(time.Hour), Last: true, Max: 10})
	iq := sc.expect("iq")
	q := iq.child(nsMAM2, "query")
	if iq.get("type") != "set" || iq.get("to") != "" || q == nil || q.get("queryid") == "" {
		t.Fatalf("query iq: type=%q to=%q query=%v", iq.get("type"), iq.get("to"), q)
	}
	x := q.child(nsData, "x")
	if fieldValue(x, "FORM_TYPE") != nsMAM2 || fieldValue(x, "with") != "bob@example.test" ||
		fieldValue(x, "start") != "2026-01-02T03:04:05Z" || fieldValue(x, "end") != "2026-01-02T04:04:05Z" {
		t.Fatalf("form fields wrong: %+v", x.kids)
	}
	set := q.child(nsRSM, "set")
	if set.child(nsRSM, "max").textOrEmpty() != "10" || set.child(nsRSM, "before") == nil || set.child(nsRSM, "after") != nil {
		t.Fatal("rsm set wrong")
	}
	qid := q.get("queryid")
	msg := func(id, body string) string {
		return `<message xmlns="jabber:client" from="bob@example.test/x" to="alice@example.test" type="chat" id="` + id + `"><body>` + body + `</body></message>`
	}
	sc.write(mamResultXML(nsMAM2, "mallory@example.test/x", qid, "spoof1", "2026-01-02T03:10:00Z", msg("s1", "forged by mallory")))
	sc.write(mamResultXML(nsMAM2, "alice@example.test/other", qid, "spoof2", "2026-01-02T03:10:00Z", msg("s2", "forged by another resource")))
	sc.write(mamResultXML(nsMAM2, "example.test", qid, "spoof3", "2026-01-02T03:10:00Z", msg("s3", "forged as the server")))
	sc.write(mamResultXML(nsMAM2, "", "otherquery", "spoof4", "2026-01-02T03:10:00Z", msg("s4", "another query")))
	sc.write(mamResultXML(nsMAM1, "", qid, "spoof5", "2026-01-02T03:10:00Z", msg("s5", "wrong namespace")))
	sc.write(mamResultXML(nsMAM2, "", qid, "A1", "2026-01-02T03:11:00Z", msg("m1", "one")))
	sc.write(`<message from="bob@example.test/x" type="chat" id="live"><body>live message</body></message>`)
	sc.write(mamResultXML(nsMAM2, "alice@example.test", qid, "A2", "2026-01-02T03:12:00.5Z", `<message xmlns="jabber:client" from="alice@example.test/web" to="bob@example.test" id="m2"><body>two &amp; more</body><thread>t</thread></message>`))
	sc.write(mamResultXML(nsMAM2, "", qid, "A3", "2026-01-02T03:13:00Z", `<message xmlns="jabber:client" from="bob@example.test/x" to="alice@example.test" type="chat"><composing xmlns="http://jabber.org/protocol/chatstates"/></message>`))
	sc.write(`<iq type="result" id="` + iq.get("id") + `"><fin xmlns="urn:xmpp:mam:2" complete="true"><set xmlns="http://jabber.org/protocol/rsm"><first>A1</first><last>A3</last><count>3</count></set></fin></iq>`)
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	p := r.p
	if !p.Complete || p.First != "A1" || p.Last != "A3" || p.Count != 3 || len(p.Messages) != 2 {
		t.Fatalf("page = %+v", p)
	}
	m1, m2 := p.Messages[0], p.Messages[1]
	if m1.ArchiveID != "A1" || m1.Body != "one" || m1.From != "bob@example.test/x" || m1.ID != "m1" || m1.Type != "chat" || !m1.Time.Equal(start.Add(7*time.Minute-5*time.Second)) {
		t.Fatalf("m1 = %+v", m1)
	}
	if m2.ArchiveID != "A2" || m2.Body != "two & more" || m2.Type != "normal" || m2.Thread != "t" || m2.Time.Nanosecond() != 5e8 {
		t.Fatalf("m2 = %+v", m2)
	}
	live := h.wait(t, func(ev Event) bool { _, ok := ev.(*Message); return ok }).(*Message)
	if live.ID != "live" {
		t.Fatalf("first message event = %+v, want the live one", live)
	}
	select {
	case ev := <-h:
		t.Fatalf("unexpected event after the live message: %#v", ev)
	default:
	}
	// A result after the query ended is dropped too.
	sc.write(mamResultXML(nsMAM2, "", qid, "late", "2026-01-02T03:14:00Z", msg("l", "late")))
	sc.write(`<message from="bob@example.test/x" type="chat" id="live2"><body>x</body></message>`)
	if m := h.wait(t, func(ev Event) bool { _, ok := ev.(*Message); return ok }).(*Message); m.ID != "live2" {
		t.Fatalf("event = %+v", m)
	}
}

// TestHistoryBound: a server sending more results than asked cannot grow
// the page past Max; the kept part is the one that pages on without a gap.
func TestHistoryBound(t *testing.T) {
	for _, tc := range []struct {
		name        string
		q           HistoryQuery
		first, last string
	}{
		{"forwards", HistoryQuery{After: "X", Max: 3}, "R0", "R2"},
		{"backwards", HistoryQuery{Before: "Y", Max: 3}, "R7", "R9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startScriptServer(t)
			c, sc := dialScript(t, s, make(chanHandler, 100), func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
			ch := runHistory(t, c, tc.q)
			iq := sc.expect("iq")
			set := iq.child(nsMAM2, "query").child(nsRSM, "set")
			if tc.q.After != "" && set.child(nsRSM, "after").textOrEmpty() != "X" || tc.q.Before != "" && set.child(nsRSM, "before").textOrEmpty() != "Y" {
				t.Fatal("paging id not sent")
			}
			qid := iq.child(nsMAM2, "query").get("queryid")
			var b strings.Builder
			for i := range 10 {
				b.WriteString(mamResultXML(nsMAM2, "", qid, fmt.Sprintf("R%d", i), "2026-01-02T03:04:05Z",
					fmt.Sprintf(`<message xmlns="jabber:client" from="bob@example.test/x"><body>%d</body></message>`, i)))
			}
			sc.write(b.String())
			sc.write(`<iq type="result" id="` + iq.get("id") + `"><fin xmlns="urn:xmpp:mam:2" complete="true"><set xmlns="http://jabber.org/protocol/rsm"><first>R0</first><last>R9</last></set></fin></iq>`)
			r := <-ch
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.p.Complete || len(r.p.Messages) != 3 || r.p.First != tc.first || r.p.Last != tc.last ||
				r.p.Messages[0].ArchiveID != tc.first || r.p.Messages[2].ArchiveID != tc.last {
				t.Fatalf("page = %+v", r.p)
			}
		})
	}
}

// TestHistoryRoomAndFallback: a room archive takes results only from the
// room; a server without mam:2 is asked with mam:1; without either the
// error is ErrUnsupported.
func TestHistoryRoomAndFallback(t *testing.T) {
	s := startScriptServer(t)
	c, sc := dialScript(t, s, make(chanHandler, 100), func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })

	ch := runHistory(t, c, HistoryQuery{Room: "Room@conference.example.test"})
	iq := sc.expect("iq")
	if iq.get("to") != "room@conference.example.test" || iq.child(nsMAM2, "query").child(nsRSM, "set").child(nsRSM, "max").textOrEmpty() != "50" {
		t.Fatalf("room query to=%q", iq.get("to"))
	}
	sc.write(`<iq type="error" id="` + iq.get("id") + `" from="room@conference.example.test"><error type="cancel"><feature-not-implemented xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></iq>`)
	iq = sc.expect("iq")
	q := iq.child(nsMAM1, "query")
	if q == nil || fieldValue(q.child(nsData, "x"), "FORM_TYPE") != nsMAM1 {
		t.Fatal("no mam:1 fallback query")
	}
	qid := q.get("queryid")
	gc := `<message xmlns="jabber:client" from="room@conference.example.test/bob" type="groupchat" id="g1"><body>hi room</body></message>`
	sc.write(mamResultXML(nsMAM1, "alice@example.test", qid, "own", "2026-01-02T03:04:05Z", gc))
	sc.write(mamResultXML(nsMAM1, "room@conference.example.test/bob", qid, "occupant", "2026-01-02T03:04:05Z", gc))
	sc.write(mamResultXML(nsMAM1, "room@conference.example.test", qid, "G1", "2026-01-02T03:04:05Z", gc))
	sc.write(`<iq type="result" id="` + iq.get("id") + `" from="room@conference.example.test"><fin xmlns="urn:xmpp:mam:1"><set xmlns="http://jabber.org/protocol/rsm"><first>G1</first><last>G1</last></set></fin></iq>`)
	r := <-ch
	if r.err != nil || len(r.p.Messages) != 1 || r.p.Messages[0].ArchiveID != "G1" || r.p.Messages[0].Type != "groupchat" || r.p.Complete || r.p.Count != -1 {
		t.Fatalf("room page = %+v, %v", r.p, r.err)
	}

	ch = runHistory(t, c, HistoryQuery{})
	for range 2 {
		iq = sc.expect("iq")
		sc.write(`<iq type="error" id="` + iq.get("id") + `"><error type="cancel"><service-unavailable xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></iq>`)
	}
	if r := <-ch; !errors.Is(r.err, ErrUnsupported) {
		t.Fatalf("no archive: err = %v", r.err)
	}
}

// TestHistoryInvalid: bad queries fail before anything is sent.
func TestHistoryInvalid(t *testing.T) {
	c := &Conn{own: JID{Local: "alice", Domain: "example.test"}}
	now := time.Now()
	for _, q := range []HistoryQuery{
		{Max: -1}, {Max: MaxHistoryMax + 1}, {Start: now, End: now.Add(-time.Second)},
		{Room: "room@conference.example.test/nick"}, {Room: "conference.example.test"}, {With: "a@@b"},
		{After: strings.Repeat("x", 300)},
	} {
		if _, err := c.History(t.Context(), q); err == nil {
			t.Errorf("History(%+v) accepted", q)
		}
	}
}

// TestAvatarHash: XEP-0153 hashes in presence, both ways.
func TestAvatarHash(t *testing.T) {
	const h = "0123456789abcdef0123456789abcdef01234567"
	for _, tc := range []struct {
		in   string
		want *string
	}{
		{`<presence/>`, nil},
		{`<presence><x xmlns="vcard-temp:x:update"/></presence>`, nil},
		{`<presence><x xmlns="vcard-temp:x:update"><photo/></x></presence>`, ptr("")},
		{`<presence><x xmlns="vcard-temp:x:update"><photo> ` + strings.ToUpper(h) + `
</photo></x></presence>`, ptr(h)},
		{`<presence><x xmlns="vcard-temp:x:update"><photo>not-a-hash</photo></x></presence>`, nil},
		{`<presence><x xmlns="other"><photo>` + h + `</photo></x></presence>`, nil},
	} {
		n, err := parseElement(stdHeader, []byte(tc.in))
		if err != nil {
			t.Fatal(err)
		}
		got := parseAvatarHash(n)
		if (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
			t.Errorf("%s: got %v, want %v", tc.in, deref(got), deref(tc.want))
		}
	}
	if got := string(encodePresence(Presence{Avatar: ptr(h)})); got != `<presence><x xmlns="vcard-temp:x:update"><photo>`+h+`</photo></x></presence>` {
		t.Errorf("encoded %s", got)
	}
	if (Presence{Avatar: ptr("xyz")}).Validate() == nil {
		t.Error("bad outgoing hash accepted")
	}
	if AvatarHash([]byte("abc")) != "a9993e364706816aba3e25717850c26c9cd0d89d" || AvatarHash(nil) != "" {
		t.Error("AvatarHash")
	}
}

func ptr(s string) *string { return &s }

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%q", *s)
}

// TestOwnAvatarHash: once set, the user's hash is re-announced with the
// current presence and carried by every later broadcast presence, not by
// directed ones.
func TestOwnAvatarHash(t *testing.T) {
	s := startScriptServer(t)
	c, sc := dialScript(t, s, make(chanHandler, 100), func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
	const h = "0123456789abcdef0123456789abcdef01234567"
	photo := func(p *node) *string { return parseAvatarHash(p) }
	if err := c.SetAvatarHash(t.Context(), "not-hex"); err == nil {
		t.Fatal("bad hash accepted")
	}
	if err := c.SendPresence(t.Context(), Presence{Show: "dnd", Status: "busy"}); err != nil {
		t.Fatal(err)
	}
	if p := sc.expect("presence"); photo(p) != nil {
		t.Fatal("a hash before SetAvatarHash")
	}
	if err := c.SetAvatarHash(t.Context(), strings.ToUpper(h)); err != nil {
		t.Fatal(err)
	}
	p := sc.expect("presence")
	if got := photo(p); got == nil || *got != h || p.child(nsClient, "show").textOrEmpty() != "dnd" {
		t.Fatalf("re-announced presence: avatar %s, show %q", deref(got), p.child(nsClient, "show").textOrEmpty())
	}
	if err := c.SendPresence(t.Context(), Presence{To: "room@conference.example.test/alice"}); err != nil {
		t.Fatal(err)
	}
	if p := sc.expect("presence"); photo(p) != nil {
		t.Fatal("directed presence carries the hash")
	}
	if err := c.SendPresence(t.Context(), Presence{Show: "away"}); err != nil {
		t.Fatal(err)
	}
	if got := photo(sc.expect("presence")); got == nil || *got != h {
		t.Fatalf("later presence: avatar %s", deref(got))
	}
}
