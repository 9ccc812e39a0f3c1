package sidecar_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/sidecar"
	"expressolivre.org/imsidecar/xmppconn"
)

// TestE2EBOSHRepollHostile: on the real daemon (Prosody, PHP session
// files), a connection whose held BOSH request was answered carries its
// next request to the parker (repoll.go), which must judge it as on a
// fresh connection. Mallory's own page's connection, once its held
// request is answered, sends: her cookie with alice's sid and a message
// for carol, a forged sid, a foreign Origin, an oversized body. Each gets
// what it gets anywhere; the message never reaches carol, mallory gets
// none of alice's stanzas, and alice's page and stream go on.
func TestE2EBOSHRepollHostile(t *testing.T) {
	r := startBrowserRig(t, daemonOptions{})
	r.e.register(t, "mallory")
	mallory := r.e.login(t, "mallory")
	alicePage, _ := r.page(t)
	mpage := sidecar.NewBOSHClient(t, r.e.D.URL+"/http-bind", "Cookie", "sessionid="+mallory.SID, "Origin", r.e.D.URL)
	mpage.Wait = 1
	mpage.Create(r.e.XMPP.Domain)
	r.e.secrets = append(r.e.secrets, mpage.SID)
	if jid := mpage.Login("mallory", "placeholder"); !strings.HasPrefix(jid, mallory.Bare+"/") {
		t.Fatalf("mallory bound %q", jid)
	}
	host := strings.TrimPrefix(r.e.D.URL, "http://")
	request := func(cookie, origin, body string) string {
		return "POST /http-bind HTTP/1.1\r\nHost: " + host + "\r\nCookie: sessionid=" + cookie + "\r\nOrigin: " + origin +
			"\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	}
	bodyOf := func(rid int64, sid, payload string) string {
		return `<body xmlns="http://jabber.org/protocol/httpbind" rid="` + strconv.FormatInt(rid, 10) + `" sid="` + sid + `">` + payload + `</body>`
	}
	// answered is a connection of mallory's page whose held request
	// the daemon answered (its 1 s wait ran out), so that its next
	// request is read by the parker.
	answered := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(30 * time.Second))
		br := bufio.NewReader(c)
		mpage.RID++
		io.WriteString(c, request(mallory.SID, r.e.D.URL, bodyOf(mpage.RID, mpage.SID, "")))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.Contains(string(raw), "terminate") {
			t.Fatalf("mallory's held request: %d %s", resp.StatusCode, raw)
		}
		return c, br
	}
	forged := strings.Repeat("ab", 20)
	for _, tc := range []struct {
		name   string
		req    func() string
		status int
		want   string
	}{
		{"her cookie, alice's sid, a message for carol", func() string {
			return request(mallory.SID, r.e.D.URL, bodyOf(alicePage.RID+1, alicePage.SID,
				`<message xmlns="jabber:client" to="`+r.carol.Bare+`" type="chat"><body>forjada</body></message>`))
		}, http.StatusOK, `condition="item-not-found"`},
		{"a forged sid", func() string {
			return request(mallory.SID, r.e.D.URL, bodyOf(mpage.RID+1, forged, ""))
		}, http.StatusNotFound, `condition="item-not-found"`},
		{"a foreign Origin", func() string {
			return request(mallory.SID, "https://evil.example", bodyOf(mpage.RID+1, mpage.SID, ""))
		}, http.StatusForbidden, "origin_forbidden"},
		{"an oversized body", func() string {
			return request(mallory.SID, r.e.D.URL, bodyOf(mpage.RID+1, mpage.SID,
				`<message xmlns="jabber:client" to="`+r.carol.Bare+`"><body>`+strings.Repeat("x", 200<<10)+`</body></message>`))
		}, http.StatusRequestEntityTooLarge, "too_large"},
	} {
		c, br := answered()
		io.WriteString(c, tc.req())
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(raw), tc.want) {
			t.Errorf("%s: %d %s, want %d with %s", tc.name, resp.StatusCode, raw, tc.status, tc.want)
		}
		if strings.Contains(string(raw), "jabber:client") {
			t.Errorf("%s: the answer carries stanzas: %s", tc.name, raw)
		}
	}
	// Alice's page and stream go on; carol never got the forged message
	// (she gets alice's next one, sent after it, with nothing before).
	r.bob.C.send(t, r.alice.Bare, "depois dos ataques", false)
	alicePage.WaitFor(15*time.Second, "bob's message after the hostile requests", func(s string) bool { return strings.Contains(s, "depois dos ataques") })
	alicePage.Send("", `<message xmlns="jabber:client" to="`+r.carol.Bare+`" type="chat"><body>marcador</body></message>`)
	r.carol.waitFor(t, 15*time.Second, "alice's marker", func(ev xmppconn.Event) bool {
		m, ok := ev.(*xmppconn.Message)
		if ok && m.Body == "forjada" {
			t.Errorf("carol got mallory's forged message from %s", m.From)
		}
		return ok && m.Body == "marcador"
	})
	for range 2 {
		mpage.Send("", "")
	}
	if n := mpage.Count(func(s string) bool { return strings.Contains(s, "depois dos ataques") }); n != 0 {
		t.Errorf("mallory's page got %d of alice's messages", n)
	}
}
