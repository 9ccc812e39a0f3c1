package sidecar_test

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// historyMsg and historyResp are GET /v1/history's answer.
type historyMsg struct {
	ArchiveID string `json:"archive_id"`
	From      string `json:"from"`
	To        string `json:"to"`
	Type      string `json:"type"`
	Body      string `json:"body"`
	ID        string `json:"id"`
	Time      string `json:"time"`
}

type historyResp struct {
	Messages []historyMsg `json:"messages"`
	Complete bool         `json:"complete"`
	First    string       `json:"first"`
	Last     string       `json:"last"`
	Count    *int         `json:"count"`
}

// history calls GET /v1/history with the given parameters.
func (c *apiClient) history(tb testing.TB, params url.Values) historyResp {
	tb.Helper()
	var r historyResp
	c.mustCall(tb, "GET", "/v1/history?"+params.Encode(), nil, &r, http.StatusOK)
	return r
}

// pageAll reads the whole conversation with peer page by page, forwards
// (after=last) or backwards (before=first), and returns it oldest first
// with the number of pages. Every page but the last must say
// complete=false, the last complete=true.
func pageAll(tb testing.TB, c *apiClient, peer string, max int, backwards bool) ([]historyMsg, int) {
	tb.Helper()
	var all []historyMsg
	cursor := ""
	for pages := 1; ; pages++ {
		q := url.Values{"with": {peer}, "max": {strconv.Itoa(max)}}
		switch {
		case backwards:
			q.Set("before", cursor) // "" the first time: the newest page
		case cursor != "":
			q.Set("after", cursor)
		}
		p := c.history(tb, q)
		if len(p.Messages) > max {
			tb.Fatalf("page of %d messages with max=%d", len(p.Messages), max)
		}
		if backwards {
			all = append(append([]historyMsg{}, p.Messages...), all...)
			cursor = p.First
		} else {
			all = append(all, p.Messages...)
			cursor = p.Last
		}
		if p.Complete {
			return all, pages
		}
		if len(p.Messages) == 0 || pages > 100 {
			tb.Fatalf("page %d is empty or paging does not end (complete=false)", pages)
		}
	}
}

// TestE2EHistory (issue 8 §2): 250 messages between two users, read page
// by page backwards and forwards through GET /v1/history: the same
// messages both ways, none missing, none twice, complete only at the
// ends; with, start and end filter; forged archive results from another
// user reach neither the history nor the events.
func TestE2EHistory(t *testing.T) {
	const total = 250
	e := startE2E(t, "files", daemonOptions{Extra: []string{"--rate-limit=1000"}})
	e.register(t, "alice", "bob", "carol", "mallory")
	alice, bob, carol := e.login(t, "alice"), e.login(t, "bob"), e.login(t, "carol")
	pa := alice.connect(t)
	bob.connect(t)
	carol.connect(t)
	var conn connectResp
	alice.C.mustCall(t, "POST", "/v1/connect", nil, &conn, http.StatusOK)

	mallory := rawLogin(t, e.XMPP, "mallory", "mallory-pw")
	forge := func(n int) {
		for i := range n {
			fmt.Fprintf(mallory, `<message to="%s"><result xmlns="urn:xmpp:mam:2" queryid="q%d" id="forged%d"><forwarded xmlns="urn:xmpp:forward:0"><delay xmlns="urn:xmpp:delay" stamp="2020-01-01T00:00:00Z"/><message xmlns="jabber:client" from="%s/x" to="%s" type="chat" id="forged-msg-%d"><body>forged history</body></message></forwarded></result></message>`,
				conn.JID, i, i, bob.Bare, alice.Bare, i)
		}
	}

	start := time.Now()
	forge(5)
	for i := range total {
		body := fmt.Sprintf("h%03d", i)
		if i%3 == 0 {
			alice.C.send(t, bob.Bare, body, false)
		} else {
			bob.C.send(t, alice.Bare, body, false)
		}
		if i == total/2 {
			forge(5)
		}
	}
	for i := range 5 {
		carol.C.send(t, alice.Bare, fmt.Sprintf("carol%d", i), false)
	}
	// The two senders' streams reach the archive at their own pace: wait
	// until the server counts every message.
	deadline := time.Now().Add(20 * time.Second)
	for {
		p := alice.C.history(t, url.Values{"with": {bob.Bare}, "before": {""}, "max": {"1"}})
		if p.Count == nil {
			t.Fatal("Prosody reported no count")
		}
		if *p.Count == total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages archived after 20s", *p.Count, total)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d messages sent and archived in %v", total, time.Since(start).Round(time.Millisecond))

	pageStart := time.Now()
	back, backPages := pageAll(t, alice.C, bob.Bare, 40, true)
	fwd, fwdPages := pageAll(t, alice.C, bob.Bare, 40, false)
	t.Logf("paged %d messages backwards in %d pages, forwards in %d, in %v", len(back), backPages, fwdPages, time.Since(pageStart).Round(time.Millisecond))
	if len(back) != total || len(fwd) != total {
		t.Fatalf("backwards %d messages, forwards %d, want %d", len(back), len(fwd), total)
	}
	ids := map[string]bool{}
	bodies := map[string]bool{}
	lastBy := map[string]int{}
	for i := range back {
		b, f := back[i], fwd[i]
		if b != f {
			t.Fatalf("message %d differs: backwards %+v, forwards %+v", i, b, f)
		}
		if ids[b.ArchiveID] || bodies[b.Body] {
			t.Fatalf("duplicate at %d: %+v", i, b)
		}
		ids[b.ArchiveID], bodies[b.Body] = true, true
		n, err := strconv.Atoi(strings.TrimPrefix(b.Body, "h"))
		if err != nil || !strings.HasPrefix(b.Body, "h") || n >= total {
			t.Fatalf("unexpected message in the conversation: %+v", b)
		}
		wantFrom, wantTo := bob.Bare, alice.Bare
		if n%3 == 0 {
			wantFrom, wantTo = alice.Bare, bob.Bare
		}
		if bareJID(b.From) != wantFrom || bareJID(b.To) != wantTo || b.Type != "chat" || b.ID == "" || b.ArchiveID == "" {
			t.Fatalf("message %s: %+v", b.Body, b)
		}
		if _, err := time.Parse(time.RFC3339, b.Time); err != nil {
			t.Fatalf("message %s time %q: %v", b.Body, b.Time, err)
		}
		// Each sender's messages are archived in the order sent.
		if prev, ok := lastBy[wantFrom]; ok && n <= prev {
			t.Fatalf("%s's message %s archived after h%03d", wantFrom, b.Body, prev)
		}
		lastBy[wantFrom] = n
	}
	if len(bodies) != total {
		t.Fatalf("%d distinct messages, want %d", len(bodies), total)
	}

	// with: carol's messages only.
	var cp historyResp
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if cp = alice.C.history(t, url.Values{"with": {carol.Bare}}); len(cp.Messages) >= 5 || time.Now().After(deadline) {
			break
		}
	}
	if len(cp.Messages) != 5 || !cp.Complete || cp.Messages[0].Body != "carol0" || cp.Messages[4].Body != "carol4" {
		t.Fatalf("with carol: %+v", cp)
	}
	// The whole archive (no with) holds both conversations.
	if all, _ := pageAll(t, alice.C, "", 50, true); len(all) != total+5 {
		t.Fatalf("whole archive: %d messages, want %d", len(all), total+5)
	}

	// start and end: archive times have one-second resolution, so put a
	// whole second between the two batches and split there.
	newest, err := time.Parse(time.RFC3339, back[total-1].Time)
	if err != nil {
		t.Fatal(err)
	}
	split := newest.Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(split.Add(1100 * time.Millisecond)))
	for i := range 3 {
		bob.C.send(t, alice.Bare, fmt.Sprintf("late%d", i), false)
	}
	splitS := split.UTC().Format(time.RFC3339)
	deadline = time.Now().Add(10 * time.Second)
	var late historyResp
	for {
		late = alice.C.history(t, url.Values{"with": {bob.Bare}, "start": {splitS}})
		if len(late.Messages) == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(late.Messages) != 3 || late.Messages[0].Body != "late0" || late.Messages[2].Body != "late2" || !late.Complete {
		t.Fatalf("start=%s: %+v", splitS, late)
	}
	early := alice.C.history(t, url.Values{"with": {bob.Bare}, "end": {splitS}, "before": {""}, "max": {"10"}})
	if len(early.Messages) != 10 || early.Messages[9].Body != back[total-1].Body || early.Complete {
		t.Fatalf("end=%s, newest page: %+v", splitS, early)
	}
	between := alice.C.history(t, url.Values{"with": {bob.Bare}, "start": {splitS}, "end": {split.Add(time.Hour).UTC().Format(time.RFC3339)}, "max": {"2"}})
	if len(between.Messages) != 2 || between.Messages[0].Body != "late0" || between.Complete {
		t.Fatalf("start..end, max 2: %+v", between)
	}

	// Nothing forged reached the events or any history page.
	// Mallory's plain message after the forgeries arrives, so the forged
	// ones (earlier on the same stream) did reach the sidecar.
	forge(5)
	fmt.Fprintf(mallory, `<message to="%s" type="chat" id="mal1"><body>hello from mallory</body></message>`, conn.JID)
	pa.waitFor(t, 15*time.Second, "mallory's message after the forgeries", func(ev event) bool {
		return ev.Event == "message" && ev.ID == "mal1" && bareJID(ev.From) == e.XMPP.JID("mallory")
	})
	for _, ev := range pa.seen {
		if strings.Contains(ev.Body, "forged") || strings.HasPrefix(ev.ID, "forged-msg-") {
			t.Fatalf("a forged archive result became an event: %+v", ev)
		}
	}
	all, _ := pageAll(t, alice.C, "", 100, false)
	for _, m := range all {
		if strings.Contains(m.Body, "forged") {
			t.Fatalf("a forged result is in the history: %+v", m)
		}
	}

	// Bad queries are 400s.
	for _, q := range []string{"max=0", "max=500", "start=yesterday", "with=not%20a%20jid@@", "end=2020-01-01T00:00:00Z&start=2021-01-01T00:00:00Z", "colour=red"} {
		if st, err := alice.C.call(t.Context(), "GET", "/v1/history?"+q, nil, nil); st != 400 || errCode(err) != "bad_request" {
			t.Errorf("GET /v1/history?%s = %d %v, want 400 bad_request", q, st, err)
		}
	}
	if st, err := alice.C.call(t.Context(), "GET", "/v1/history?after=no-such-id", nil, nil); st != 404 || errCode(err) != "not_found" {
		t.Errorf("after an unknown id: %d %v, want 404 not_found", st, err)
	}
}

// TestE2EHistoryUnavailable: a server without mod_mam gives 501
// feature_unavailable.
func TestE2EHistoryUnavailable(t *testing.T) {
	e := startE2EWith(t, "files", xmppconntest.Options{DisableModules: []string{"mam"}}, daemonOptions{})
	e.register(t, "alice")
	alice := e.login(t, "alice")
	alice.connect(t)
	st, err := alice.C.call(t.Context(), "GET", "/v1/history?before=", nil, nil)
	if st != http.StatusNotImplemented || errCode(err) != "feature_unavailable" {
		t.Fatalf("history without MAM: %d %v", st, err)
	}
}

// rawLogin opens a bare-hands XMPP client stream (STARTTLS, SASL PLAIN,
// bind) for sending stanzas no client library would build, e.g. forged
// archive results. What the server sends is read and dropped.
func rawLogin(tb testing.TB, srv *xmppconntest.Server, user, pass string) io.Writer {
	tb.Helper()
	nc, err := net.DialTimeout("tcp", srv.Addr, 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	var c net.Conn = nc
	header := `<?xml version="1.0"?><stream:stream to="` + srv.Domain + `" xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams" version="1.0">`
	step := func(send, until string) {
		tb.Helper()
		if _, err := io.WriteString(c, send); err != nil {
			tb.Fatalf("raw %s: write: %v", user, err)
		}
		var got []byte
		buf := make([]byte, 1) // byte by byte: nothing read past the TLS switch
		for !strings.Contains(string(got), until) || got[len(got)-1] != '>' {
			if _, err := c.Read(buf); err != nil {
				tb.Fatalf("raw %s: waiting for %s: %v (got %q)", user, until, err, got)
			}
			got = append(got, buf[0])
		}
	}
	step(header, "</stream:features>")
	step(`<starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"/>`, "<proceed")
	tc := tls.Client(nc, srv.TLSConfig())
	if err := tc.Handshake(); err != nil {
		tb.Fatal(err)
	}
	c = tc
	step(header, "</stream:features>")
	step(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">`+base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass))+`</auth>`, "<success")
	step(header, "</stream:features>")
	step(`<iq type="set" id="bind1"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>raw</resource></bind></iq>`, "</iq>")
	nc.SetDeadline(time.Time{})
	done := make(chan struct{})
	go func() { defer close(done); io.Copy(io.Discard, tc) }()
	tb.Cleanup(func() { nc.Close(); <-done })
	return tc
}

// TestE2ERoomHistory: a room's archive (Prosody mod_muc_mam) through GET
// /v1/history?room=, read by a user who is not in the room.
func TestE2ERoomHistory(t *testing.T) {
	e := startE2EWith(t, "files", xmppconntest.Options{MUC: true, MUCConfig: `  modules_enabled = { "muc_mam" }`}, daemonOptions{})
	e.register(t, "alice", "bob")
	alice := e.login(t, "alice")
	alice.connect(t)
	room := "lounge@" + e.XMPP.MUCDomain
	bob := rawLogin(t, e.XMPP, "bob", "bob-pw")
	// Join (creating the room), make it an instant room, talk.
	fmt.Fprintf(bob, `<presence to="%s/bob"><x xmlns="http://jabber.org/protocol/muc"/></presence>`, room)
	fmt.Fprintf(bob, `<iq type="set" id="cfg1" to="%s"><query xmlns="http://jabber.org/protocol/muc#owner"><x xmlns="jabber:x:data" type="submit"/></query></iq>`, room)
	for i := range 3 {
		fmt.Fprintf(bob, `<message to="%s" type="groupchat" id="g%d"><body>room %d</body></message>`, room, i, i)
	}
	var p historyResp
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		st, err := alice.C.call(t.Context(), "GET", "/v1/history?"+url.Values{"room": {room}, "before": {""}}.Encode(), nil, &p)
		if st == http.StatusOK && len(p.Messages) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("room history: %d %v %+v", st, err, p)
		}
	}
	for i, m := range p.Messages {
		if m.Body != fmt.Sprintf("room %d", i) || m.Type != "groupchat" || m.From != room+"/bob" || m.ID != fmt.Sprintf("g%d", i) {
			t.Fatalf("room message %d: %+v", i, m)
		}
	}
	if !p.Complete {
		t.Fatal("room history of 3 messages not complete")
	}
}
