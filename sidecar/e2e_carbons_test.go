package sidecar_test

// A message the web app sends through /v1 shows in alice's attached
// pages that enabled carbons (XEP-0280), as a "sent" carbon, against the
// real daemon and Prosody; bob's page, another PHP session, sees nothing.

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

func TestE2ECarbonsFromV1(t *testing.T) {
	r := startBrowserRig(t, daemonOptions{})
	dom := r.e.XMPP.Domain
	ws, _, err := dialWS(t, r, r.e.D.URL, r.alice.SID)
	if err != nil {
		t.Fatal(err)
	}
	ws.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="` + dom + `" version="1.0"/>`)
	ws.waitFor("SASL features", contains("PLAIN"))
	ws.send(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">` + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00x")) + `</auth>`)
	ws.waitFor("success", contains("<success"))
	ws.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="` + dom + `" version="1.0"/>`)
	ws.send(`<iq xmlns="jabber:client" type="set" id="b"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></iq>`)
	jid := ws.waitFor("bound", contains("<jid>"))
	jid = jid[strings.Index(jid, "<jid>")+5 : strings.Index(jid, "</jid>")]
	ws.send(`<iq xmlns="jabber:client" type="set" id="cc"><enable xmlns="urn:xmpp:carbons:2"/></iq>`)
	ws.waitFor("carbons enabled", contains(`id="cc"`))
	ws.send(`<presence xmlns="jabber:client"/>`)

	bobPage := newPage(t, r, r.bob.SID)
	bobPage.Create(dom)
	r.e.secrets = append(r.e.secrets, bobPage.SID)
	bobPage.Login("bob", "placeholder")
	bobPage.Send("", `<iq xmlns="jabber:client" type="set" id="cc"><enable xmlns="urn:xmpp:carbons:2"/></iq>`)
	bobPage.Send("", `<presence xmlns="jabber:client"/>`)

	// The web app sends through /v1: carol gets it, alice's page shows it.
	id := r.alice.C.send(t, r.carol.Bare, "pela API <v1>", false)
	r.carol.waitFor(t, 10*time.Second, "the /v1 message", func(ev xmppconn.Event) bool {
		m, ok := ev.(*xmppconn.Message)
		return ok && m.Body == "pela API <v1>"
	})
	cc := ws.waitFor("the sent carbon", contains("<sent "))
	for _, want := range []string{`from="` + r.alice.Bare + `"`, `to="` + jid + `"`, `to="` + r.carol.Bare + `"`, `id="` + id + `"`, `<body>pela API &lt;v1&gt;</body>`} {
		if !strings.Contains(cc, want) {
			t.Errorf("carbon %s lacks %s", cc, want)
		}
	}
	// Bob's page (another PHP session) sees nothing of it, up to a
	// later message of its own.
	r.carol.Conn.Send(t.Context(), xmppconn.Message{To: r.bob.Bare, Body: "para o bob"})
	bobPage.WaitFor(10*time.Second, "carol's message to bob", func(s string) bool { return strings.Contains(s, "para o bob") })
	if n := bobPage.Count(func(s string) bool { return strings.Contains(s, "pela API") }); n != 0 {
		t.Fatalf("bob's page saw alice's /v1 message: %q", bobPage.Got)
	}
}
