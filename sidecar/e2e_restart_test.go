package sidecar_test

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// TestE2ERestartResumesOnNextPoll is what a package upgrade (the service
// restarted) does to a user online in Expresso. The old daemon gets
// SIGTERM and closes the user's stream with unavailable; a new one starts
// with an empty registry. The page's next poll, with the cursor the old
// daemon gave it, is answered 200 recovered:false (not 409) and brings the
// user back online: the desktop contact sees them available again and a
// message sent then arrives on the following poll. The PHP session is
// untouched (GET /v1/me). Hostile cases: a cookie call with an old cursor,
// or a cursor of the new run, connects nobody.
func TestE2ERestartResumesOnNextPoll(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test (Prosody, PHP, the daemon binary)")
	}
	e := startE2E(t, "files", daemonOptions{})
	e.register(t, "rsalice", "rsbob", "rscarol", "rsdesk")
	desk := dialDesktop(t, e.XMPP, "rsdesk")
	alice, bob := e.login(t, "rsalice"), e.login(t, "rsbob")
	pa := alice.connect(t)
	befriendDesktop(t, alice, pa, desk)
	pb := bob.connect(t)
	pa.poll(t, 0)
	pb.poll(t, 0)
	aliceCursor, bobCursor := pa.cursor, pb.cursor

	if code, _ := e.D.Signal(t, syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d\n%s", code, e.D.LogTail(30))
	}
	desk.waitFor(t, 15*time.Second, "alice unavailable at shutdown", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && bareJID(p.From) == alice.Bare && p.Type == "unavailable"
	})
	e.D = respawn(t, e.D)
	alice.C, bob.C = e.D.client(alice.SID), e.D.client(bob.SID)
	ctx := t.Context()

	// A browser's cookie call carrying bob's old cursor changes no state.
	req, _ := http.NewRequestWithContext(ctx, "GET", e.D.URL+"/v1/events?wait=0&cursor="+url.QueryEscape(bobCursor), nil)
	req.Header.Set("Cookie", "sessionid="+bob.SID)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("cookie poll with a cursor of the old run: %d, want 409 not_connected", resp.StatusCode)
	}
	// Nor does a cursor this run gave (carol's) in bob's poll.
	carol := e.login(t, "rscarol")
	pc := carol.connect(t)
	if _, err := bob.C.events(ctx, pc.cursor, 0, 0); errCode(err) != "not_connected" {
		t.Errorf("bob polling with a cursor of this run: %v, want not_connected", err)
	}
	var me meResp
	bob.C.mustCall(t, "GET", "/v1/me", nil, &me, http.StatusOK)
	if me.State != string(xmppconn.StateOffline) {
		t.Errorf("bob is %q after polls that must not connect him, want offline", me.State)
	}

	// Alice's page polls as it always does, from several requests at
	// once (a poll repeated, a second tab): she is back, once, and the
	// log says so once.
	var pages [4]eventsPage
	var errs [4]error
	var wg sync.WaitGroup
	for i := range pages {
		wg.Go(func() { pages[i], errs[i] = alice.C.events(ctx, aliceCursor, 0, 0) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("alice's poll %d after the restart: %v (want 200 recovered:false)", i, err)
		}
		if pages[i].Recovered {
			t.Error("a first poll after a restart said recovered:true: events of the old run may be missing")
		}
	}
	page := pages[0]
	if n := strings.Count(e.D.Log(), "session resumed after a restart"); n != 1 {
		t.Errorf("the log says %d times that the session resumed, want once", n)
	}
	desk.waitFor(t, 15*time.Second, "alice available again", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && bareJID(p.From) == alice.Bare && p.Type != "unavailable"
	})
	alice.C.mustCall(t, "GET", "/v1/me", nil, &me, http.StatusOK)
	if me.User != "rsalice" || me.State != string(xmppconn.StateOnline) {
		t.Errorf("alice after resuming: %+v, want rsalice online", me)
	}
	pa.c, pa.cursor = alice.C, page.Cursor
	if _, err := desk.Conn.Send(ctx, xmppconn.Message{To: alice.Bare, Type: "chat", ID: "rs-1", Body: "de volta?"}); err != nil {
		t.Fatal(err)
	}
	pa.waitFor(t, 15*time.Second, "the desktop's message after the restart", func(ev event) bool {
		return ev.Event == "message" && ev.ID == "rs-1" && ev.Body == "de volta?"
	})
	e.checkLogs(t)
}
