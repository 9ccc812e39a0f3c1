package sidecar_test

// Expresso 2.5's "offline" menu against the real daemon and Prosody, with
// a desktop contact watching alice's presence: the same BOSH terminate
// with unavailable presence is a reload when the next page attaches
// within --offline-grace (carol sees nothing) and "offline" when none
// does (carol sees alice go, after the grace; the next page brings her
// back, with what was sent to her meanwhile). Neither another user's
// cookie nor alice's other PHP session can take this stream offline.

import (
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/sidecar"
	"expressolivre.org/imsidecar/xmppconn"
)

const offlineGrace = 3 * time.Second

// expressoUnload is what Expresso 2.5 posts on page unload and on its
// "offline" menu alike.
const expressoUnload = `<presence xmlns="jabber:client" type="unavailable"/>`

func TestE2EOfflineGrace(t *testing.T) {
	r := startBrowserRig(t, daemonOptions{Extra: []string{"--offline-grace=" + offlineGrace.String()}})
	page, jid := r.page(t)
	page.Send("", `<presence xmlns="jabber:client"/>`)
	page.WaitFor(10*time.Second, "carol's presence", func(s string) bool { return strings.Contains(s, `from="`+r.carol.Bare+`/desktop"`) })

	// A reload: the leaving page's terminate with unavailable, then the
	// next page attaches. Past the grace, carol has seen nothing.
	if b := page.Send(`type="terminate"`, expressoUnload); b.Attr("type") != "terminate" {
		t.Fatalf("terminate answered %s", page.Last)
	}
	page, _ = r.page(t)
	page.Send("", `<presence xmlns="jabber:client"/>`)
	time.Sleep(offlineGrace + time.Second)
	page.Send("", `<message xmlns="jabber:client" to="`+r.carol.Bare+`" type="chat"><body>depois do reload</body></message>`)
	r.noPresenceFrom(t, "depois do reload")

	// Bob's cookie with alice's sid cannot say it for her.
	thief := newPage(t, r, r.bob.SID)
	thief.SID, thief.RID = page.SID, page.RID
	if b := thief.Send(`type="terminate"`, expressoUnload); b.Attr("type") != "terminate" || b.Attr("condition") != "item-not-found" {
		t.Fatalf("another PHP session's terminate: %s", thief.Last)
	}
	// Alice's other PHP session (another browser) goes offline: only its
	// own stream does.
	alice2 := r.e.login(t, "alice")
	other := newPage(t, r, alice2.SID)
	other.Create(r.e.XMPP.Domain)
	r.e.secrets = append(r.e.secrets, other.SID)
	otherJID := other.Login("alice", "placeholder")
	other.Send("", `<presence xmlns="jabber:client"/>`)
	r.carol.waitFor(t, 15*time.Second, "alice's second stream online", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && p.From == otherJID && p.Type != "unavailable"
	})
	other.Send(`type="terminate"`, expressoUnload)
	r.carol.waitFor(t, 15*time.Second, "alice's second stream offline", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		if ok && p.From == jid {
			t.Errorf("alice's first stream changed presence: %+v", p)
		}
		return ok && p.From == otherJID && p.Type == "unavailable"
	})
	page.Send("", `<message xmlns="jabber:client" to="`+r.carol.Bare+`" type="chat"><body>ainda aqui</body></message>`)
	r.noPresenceFrom(t, "ainda aqui")

	// The "offline" menu: nobody attaches; carol sees alice go after the
	// grace, not before.
	left := time.Now()
	page.Send(`type="terminate"`, expressoUnload)
	r.carol.waitFor(t, offlineGrace+15*time.Second, "alice offline", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && p.From == jid && p.Type == "unavailable"
	})
	if took := time.Since(left); took < offlineGrace-500*time.Millisecond {
		t.Errorf("alice went offline %v after the terminate, before the %v grace", took, offlineGrace)
	}
	// The stream stays logged in (the /v1 side works); a message to her
	// while offline waits in the server's offline storage.
	if _, err := r.alice.C.roster(t.Context()); err != nil {
		t.Fatalf("/v1 while offline: %v", err)
	}
	if _, err := r.carol.Conn.Send(t.Context(), xmppconn.Message{To: r.alice.Bare, Body: "enquanto offline"}); err != nil {
		t.Fatal(err)
	}
	// The next page brings her back: carol sees her, she gets the message.
	page, _ = r.page(t)
	page.Send("", `<presence xmlns="jabber:client"/>`)
	r.carol.waitFor(t, 15*time.Second, "alice back online", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && p.From == jid && p.Type != "unavailable"
	})
	page.WaitFor(15*time.Second, "the message sent while offline", func(s string) bool { return strings.Contains(s, "enquanto offline") })
	page.WaitFor(15*time.Second, "carol's presence again", func(s string) bool { return strings.Contains(s, `from="`+r.carol.Bare+`/desktop"`) })
}

// newPage is a BOSH client with the session cookie of PHP session sid.
func newPage(t *testing.T, r *browserRig, sid string) *sidecar.BOSHClient {
	return sidecar.NewBOSHClient(t, r.e.D.URL+"/http-bind", "Cookie", "sessionid="+sid, "Origin", r.e.D.URL)
}
