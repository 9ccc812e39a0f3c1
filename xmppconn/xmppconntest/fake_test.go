package xmppconntest

import (
	"strings"
	"testing"
	"time"
)

func TestFakeServerLogin(t *testing.T) {
	tests := []struct {
		name string
		opts FakeOptions
	}{
		{"starttls", FakeOptions{}},
		{"byte-at-a-time", FakeOptions{ByteAtATime: true}},
		{"no-starttls", FakeOptions{NoStartTLS: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := StartFakeServer(t, tt.opts)
			r := dialRaw(t, s.Addr)
			f := r.open(s.Domain)
			if got := f.StartTLS != nil; got == tt.opts.NoStartTLS {
				t.Fatalf("STARTTLS offered = %v", got)
			}
			if !tt.opts.NoStartTLS {
				f = r.starttls(s.TLSConfig(), s.Domain)
			}
			if len(f.Mechanisms) != 1 || f.Mechanisms[0] != "PLAIN" {
				t.Fatalf("mechanisms = %v", f.Mechanisms)
			}
			if r.plainAuth("alice", "bad") {
				t.Fatal("bad password accepted")
			}
			if !r.plainAuth("alice", "secret") {
				t.Fatal("login failed")
			}
			if f = r.open(s.Domain); f.Bind == nil {
				t.Fatal("no bind feature")
			}
			r.send(`<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>`)
			var res Element
			r.next(&res)
			if !strings.Contains(res.Inner, "alice@example.test/web") {
				t.Fatalf("bind result %v", res)
			}
			var c *FakeConn
			select {
			case c = <-s.Conns():
			case <-time.After(5 * time.Second):
				t.Fatal("connection not delivered")
			}
			if c.JID != "alice@example.test/web" {
				t.Errorf("JID = %q", c.JID)
			}
			r.send(`<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq><presence/>`)
			var roster Element
			r.next(&roster)
			if roster.Attr("id") != "r1" || roster.Attr("type") != "result" || !strings.Contains(roster.Inner, "jabber:iq:roster") {
				t.Errorf("roster reply %v", roster)
			}
			if e, err := c.WaitFor(5*time.Second, func(e Element) bool { return e.XMLName.Local == "presence" }); err != nil {
				t.Fatal(err, e)
			}
			if err := c.Write(`<message from='bob@example.test/x' type='chat'><body>héllo</body></message>`); err != nil {
				t.Fatal(err)
			}
			var m struct {
				Body string `xml:"body"`
			}
			r.next(&m)
			if m.Body != "héllo" {
				t.Errorf("body = %q", m.Body)
			}
			r.send(`</stream:stream>`)
			select {
			case <-c.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("server did not end the connection")
			}
			if !c.ClientClosedStream() || c.Err() != nil {
				t.Errorf("closed=%v err=%v", c.ClientClosedStream(), c.Err())
			}
			if n := s.AuthAttempts(); n != 2 {
				t.Errorf("AuthAttempts = %d, want 2", n)
			}
		})
	}
}
