package xmppconn

import (
	"testing"
	"time"
)

// TestParseMessage: the one parse of a message, as the live path and the
// archive path both call it.
func TestParseMessage(t *testing.T) {
	n, err := parseElement(stdHeader, []byte(`<message from="bob@example.test/x" to="alice@example.test" id="m1">`+
		`<body>first</body><body>second</body><subject>s1</subject><subject>s2</subject><thread>t</thread>`+
		`<composing xmlns="http://jabber.org/protocol/chatstates"/><request xmlns="urn:xmpp:receipts"/>`+
		`<delay xmlns="urn:xmpp:delay" stamp="2026-01-02T03:04:05Z"/><body xmlns="other">no</body></message>`))
	if err != nil {
		t.Fatal(err)
	}
	m, hasBody, hasSubject := parseMessage(n)
	want := Message{From: "bob@example.test/x", To: "alice@example.test", ID: "m1", Type: NormalMessage, Body: "first",
		Subject: "s2", Thread: "t", ChatState: ChatComposing, Receipt: true, Delay: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	if !hasBody || !hasSubject || m != want {
		t.Fatalf("parseMessage =\n %+v %v %v\nwant\n %+v", m, hasBody, hasSubject, want)
	}
	n, _ = parseElement(stdHeader, []byte(`<message type="chat"><subject/></message>`))
	if m, hasBody, hasSubject := parseMessage(n); !hasBody || !hasSubject || m.Subject != "" || m.Type != ChatMessage {
		t.Fatalf("empty subject: %+v %v %v", m, hasBody, hasSubject)
	}
	n, _ = parseElement(stdHeader, []byte(`<message type="chat"><paused xmlns="http://jabber.org/protocol/chatstates"/></message>`))
	if m, hasBody, hasSubject := parseMessage(n); hasBody || hasSubject || m.ChatState != ChatPaused {
		t.Fatalf("chat state only: %+v %v %v", m, hasBody, hasSubject)
	}
}

// TestLiveAndArchiveParseAlike: the same stanza, received live and as an
// archive result, is the same Message (one model, one parse); the archive
// adds only its id and time.
func TestLiveAndArchiveParseAlike(t *testing.T) {
	inner := `<message xmlns="jabber:client" from="bob@example.test/x" to="alice@example.test" id="m7" type="chat">` +
		`<body>olá &amp; até</body><body>second</body><subject>s</subject><thread>th</thread>` +
		`<active xmlns="http://jabber.org/protocol/chatstates"/></message>`
	cfg, err := Config{Domain: "example.test", User: "alice", Password: "pw", TLS: TLSNone, Addr: "127.0.0.1:1"}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	var live *Message
	cfg.Handler = HandlerFunc(func(ev Event) {
		if m, ok := ev.(*Message); ok {
			live = m
		}
	})
	q := &mamQuery{ns: nsMAM2, max: 5}
	c := &Conn{cfg: cfg, log: cfg.Logger, own: JID{Local: "alice", Domain: "example.test"}, pending: map[string]*iqWait{},
		mam: map[string]*mamQuery{"q1": q}}
	st := &stream{nc: pipeSink(t)}
	for _, s := range []string{
		inner,
		`<message from="alice@example.test"><result xmlns="urn:xmpp:mam:2" queryid="q1" id="A9"><forwarded xmlns="urn:xmpp:forward:0">` +
			`<delay xmlns="urn:xmpp:delay" stamp="2026-01-02T03:04:05Z"/>` + inner + `</forwarded></result></message>`,
	} {
		n, err := parseElement(stdHeader, []byte(s))
		if err != nil {
			t.Fatal(err)
		}
		c.handle(st, n)
	}
	if live == nil || len(q.msgs) != 1 {
		t.Fatalf("live %v, archived %d", live, len(q.msgs))
	}
	a := q.msgs[0]
	if a.Message != *live || a.ArchiveID != "A9" || !a.Time.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Fatalf("archived\n %+v\nlive\n %+v", a, *live)
	}
	if live.Body != "olá & até" || live.ChatState != ChatActive || live.Type != ChatMessage {
		t.Fatalf("live = %+v", *live)
	}
}
