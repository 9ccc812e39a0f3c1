package xmppconn

import (
	"net"
	"testing"
)

// FuzzHandle: any well-formed stanza from the server is handled without a
// panic, and events carry only what the parsers accepted.
func FuzzHandle(f *testing.F) {
	for _, s := range []string{
		`<message from="alice@example.test"><sent xmlns="urn:xmpp:carbons:2"><forwarded xmlns="urn:xmpp:forward:0"><message xmlns="jabber:client" from="a@b/c" id="1"><body>x</body></message></forwarded></sent></message>`,
		`<message from="alice@example.test"><received xmlns="urn:xmpp:carbons:2"/></message>`,
		`<message from="b@x/y" id="2" type="chat"><body>hi</body><request xmlns="urn:xmpp:receipts"/><delay xmlns="urn:xmpp:delay" stamp="bogus"/></message>`,
		`<message><received xmlns="urn:xmpp:receipts"/></message>`,
		`<iq type="set" id="3"><query xmlns="jabber:iq:roster"><item jid="c@x"><group>g</group></item><item/></query></iq>`,
		`<iq type="get" id="4"><query xmlns="http://jabber.org/protocol/disco#info" node="n"/></iq>`,
		`<iq type="result" id="5"/>`, `<iq type="error" id="6"><error/></iq>`,
		`<presence from="x@y/z"><priority>999</priority><show>dnd</show></presence>`,
		`<presence type="subscribe" from="x@y"/>`,
		`<presence from="r@muc.example.test/n"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="owner" role="moderator" jid="a@b/c" nick="m"/><status code="110"/><status code="201"/><status code="303"/></x></presence>`,
		`<presence type="error" from="r@muc.example.test/n"><error type="cancel"><conflict xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></presence>`,
		`<message type="groupchat" from="r@muc.example.test/n" id="g"><subject>s</subject><delay xmlns="urn:xmpp:delay" stamp="2026-01-01T00:00:00Z"/></message>`,
		`<presence from="x@y/z"><x xmlns="vcard-temp:x:update"><photo>0123456789abcdef0123456789abcdef01234567</photo></x></presence>`,
		`<presence from="x@y/z"><x xmlns="vcard-temp:x:update"><photo/></x></presence>`,
		`<message><result xmlns="urn:xmpp:mam:2" queryid="q1" id="a1"><forwarded xmlns="urn:xmpp:forward:0"><delay xmlns="urn:xmpp:delay" stamp="2026-01-02T03:04:05Z"/><message xmlns="jabber:client" from="b@x/y" type="chat"><body>old</body></message></forwarded></result></message>`,
		`<message from="alice@example.test"><result xmlns="urn:xmpp:mam:2" queryid="q1"><forwarded xmlns="urn:xmpp:forward:0"/></result></message>`,
		`<message from="mallory@example.test"><result xmlns="urn:xmpp:mam:2" queryid="q1" id="a2"><forwarded xmlns="urn:xmpp:forward:0"><message><body>forged</body></message></forwarded></result></message>`, `<a xmlns="urn:xmpp:sm:3" h="99"/>`, `<r xmlns="urn:xmpp:sm:3"/>`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseElement(stdHeader, []byte(s))
		if err != nil {
			return
		}
		cfg, err := Config{Domain: "example.test", User: "alice", Password: "pw", TLS: TLSNone, Addr: "127.0.0.1:1"}.normalize()
		if err != nil {
			t.Fatal(err)
		}
		var events int
		cfg.Handler = HandlerFunc(func(Event) { events++ })
		q := &mamQuery{ns: nsMAM2, max: 2}
		c := &Conn{cfg: cfg, log: cfg.Logger, own: JID{Local: "alice", Domain: "example.test"}, pending: map[string]*iqWait{},
			mam: map[string]*mamQuery{"q1": q, "q2": {ns: nsMAM2, max: 1, last: true}}}
		c.sm.enabled = true
		// In a room, and joining another, so that room stanzas take every path.
		c.rooms = map[string]*mucRoom{
			"r@muc.example.test": {jid: "r@muc.example.test", nick: "n", joined: true, occupants: map[string]Occupant{}},
			"j@muc.example.test": {jid: "j@muc.example.test", occupants: map[string]Occupant{}, join: &joinWait{nick: "n", done: make(chan struct{})}},
			"q@muc.example.test": {jid: "q@muc.example.test", nick: "n", rejoining: true, retries: maxRejoinRetries, occupants: map[string]Occupant{}},
		}
		st := &stream{nc: pipeSink(t)}
		c.handle(st, n)
		if events > 2 {
			t.Fatalf("%d events from one stanza", events)
		}
		if len(q.msgs) > q.max || len(c.mam["q2"].msgs) > 1 {
			t.Fatalf("archive query holds %d results over its bound", len(q.msgs))
		}
		if mamResult(n) != nil && events != 0 {
			t.Fatal("an archive result became an event")
		}
	})
}

// pipeSink returns a connection whose writes are read and dropped.
func pipeSink(t *testing.T) net.Conn {
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { a.Close(); b.Close(); <-done })
	return a
}
