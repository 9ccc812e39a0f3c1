package sidecar

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A message the web app sends through POST /v1/messages reaches the
// attached tabs that enabled carbons as a "sent" carbon, escaped as it was
// typed; a tab without carbons, and a tab of another PHP session, get
// nothing.
func TestBridgeCarbonsFromV1(t *testing.T) {
	h, srv := boshHarness(t)
	withCarbons, without := h.tab(srv), h.tab(srv)
	alice := h.conn.jid
	withCarbons.Send("", `<iq xmlns="jabber:client" type="set" id="c"><enable xmlns="urn:xmpp:carbons:2"/></iq>`)
	const otherID = "mallory-session-id-0123456789abcdef"
	h.reader.set(otherID, "mallory", "pw")
	other := h.newBOSH(srv, otherID)
	other.Create("example.test")
	other.Login("mallory", "x")
	other.Send("", `<iq xmlns="jabber:client" type="set" id="c"><enable xmlns="urn:xmpp:carbons:2"/></iq>`)

	rec := h.do("POST", "/v1/messages", `{"to":"bob@example.test","body":"a < b & </body>","thread":"t-1"}`, "X-Session-Id", goodID)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("send: %d %s", rec.Code, rec.Body)
	}
	var ans struct{ ID string }
	if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil || ans.ID == "" {
		t.Fatalf("send answered %s", rec.Body)
	}
	cc := withCarbons.WaitFor(5*time.Second, "the sent carbon", func(s string) bool { return strings.Contains(s, "<sent") })
	for _, want := range []string{
		`<sent xmlns="urn:xmpp:carbons:2"><forwarded xmlns="urn:xmpp:forward:0">`,
		`from="alice@example.test"`, `to="` + alice + `"`, `type="chat"`,
		`from="` + alice + `"`, `to="bob@example.test"`, `id="` + ans.ID + `"`,
		`<body>a &lt; b &amp; &lt;/body&gt;</body>`, `<thread>t-1</thread>`,
	} {
		if !strings.Contains(cc, want) {
			t.Errorf("carbon %s lacks %s", cc, want)
		}
	}
	without.Send("", "")
	other.Send("", "")
	for name, c := range map[string]*BOSHClient{"a tab without carbons": without, "another session's tab": other} {
		if n := c.Count(func(s string) bool { return strings.Contains(s, "a &lt; b") }); n != 0 {
			t.Errorf("%s got the /v1 message: %q", name, c.Got)
		}
	}
	// A groupchat message is not copied: the room echoes it to every tab.
	rec = h.do("POST", "/v1/messages", `{"to":"room@conference.example.test","body":"na sala","type":"groupchat"}`, "X-Session-Id", goodID)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("groupchat send: %d %s", rec.Code, rec.Body)
	}
	withCarbons.Send("", "")
	if n := withCarbons.Count(func(s string) bool { return strings.Contains(s, "na sala") }); n != 0 {
		t.Errorf("a groupchat message was copied: %q", withCarbons.Got)
	}
}
