package sidecar_test

import (
	"bytes"
	"encoding/base64"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/url"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// TestE2EAvatarHash (issue 8 §4, XEP-0153): a desktop contact publishes a
// vCard photo and advertises its hash in presence; the web user's presence
// event and roster carry it as avatar, and it is the avatar's ETag.
func TestE2EAvatarHash(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{})
	e.register(t, "alice", "bob")
	alice := e.login(t, "alice")
	pa := alice.connect(t)
	bob := dialDesktop(t, e.XMPP, "bob")
	befriendDesktop(t, alice, pa, bob)

	img := image.NewRGBA(image.Rect(0, 0, 4, 4))
	img.Set(1, 2, color.RGBA{10, 200, 30, 255})
	var photo bytes.Buffer
	if err := png.Encode(&photo, img); err != nil {
		t.Fatal(err)
	}
	vcard := `<vCard xmlns="vcard-temp"><FN>Bob</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>` +
		base64.StdEncoding.EncodeToString(photo.Bytes()) + `</BINVAL></PHOTO></vCard>`
	if _, err := bob.Conn.SendIQ(t.Context(), "set", "", []byte(vcard)); err != nil {
		t.Fatalf("publish vCard: %v", err)
	}
	hash := xmppconn.AvatarHash(photo.Bytes())
	if err := bob.Conn.SendPresence(t.Context(), xmppconn.Presence{Show: "chat", Avatar: &hash}); err != nil {
		t.Fatal(err)
	}
	ev := pa.waitFor(t, 15*time.Second, "bob's presence with the avatar hash", func(ev event) bool {
		return ev.Event == "presence" && bareJID(ev.From) == bob.Bare && ev.Show == "chat"
	})
	if ev.Avatar == nil || *ev.Avatar != hash {
		t.Fatalf("presence avatar = %v, want %s", ev.Avatar, hash)
	}

	var roster struct {
		Items []struct {
			JID      string `json:"jid"`
			Presence []struct {
				Resource string  `json:"resource"`
				Avatar   *string `json:"avatar"`
			} `json:"presence"`
		} `json:"items"`
	}
	alice.C.mustCall(t, "GET", "/v1/roster", nil, &roster, http.StatusOK)
	found := false
	for _, it := range roster.Items {
		if it.JID == bob.Bare {
			found = len(it.Presence) == 1 && it.Presence[0].Avatar != nil && *it.Presence[0].Avatar == hash
		}
	}
	if !found {
		t.Fatalf("roster entry of bob lacks the avatar hash: %+v", roster.Items)
	}

	req, _ := http.NewRequestWithContext(t.Context(), "GET", e.D.URL+"/v1/avatar/"+url.PathEscape(bob.Bare), nil)
	req.Header.Set("Cookie", "sessionid="+alice.SID)
	req.Header.Set("If-None-Match", `"`+hash+`"`)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("avatar with If-None-Match of the presence hash: %d, want 304", resp.StatusCode)
	}

	// Removing the photo: an empty hash says "no avatar".
	none := ""
	if err := bob.Conn.SendPresence(t.Context(), xmppconn.Presence{Show: "away", Avatar: &none}); err != nil {
		t.Fatal(err)
	}
	ev = pa.waitFor(t, 15*time.Second, "bob's presence without avatar", func(ev event) bool {
		return ev.Event == "presence" && bareJID(ev.From) == bob.Bare && ev.Show == "away"
	})
	if ev.Avatar == nil || *ev.Avatar != "" {
		t.Fatalf("presence avatar = %v, want \"\"", ev.Avatar)
	}
}

// TestE2EOwnAvatarAdvertised: the web session advertises the user's own
// vCard photo hash in its presence (XEP-0153), as desktop clients do.
func TestE2EOwnAvatarAdvertised(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{})
	e.register(t, "alice", "bob")
	var photo bytes.Buffer
	if err := png.Encode(&photo, image.NewGray(image.Rect(0, 0, 3, 3))); err != nil {
		t.Fatal(err)
	}
	setup := dialDesktop(t, e.XMPP, "alice")
	vcard := `<vCard xmlns="vcard-temp"><PHOTO><TYPE>image/png</TYPE><BINVAL>` + base64.StdEncoding.EncodeToString(photo.Bytes()) + `</BINVAL></PHOTO></vCard>`
	if _, err := setup.Conn.SendIQ(t.Context(), "set", "", []byte(vcard)); err != nil {
		t.Fatal(err)
	}
	setup.Conn.Close(t.Context())

	alice := e.login(t, "alice")
	pa := alice.connect(t)
	bob := dialDesktop(t, e.XMPP, "bob")
	befriendDesktop(t, alice, pa, bob)
	hash := xmppconn.AvatarHash(photo.Bytes())
	bob.waitFor(t, 15*time.Second, "alice's web presence with her avatar hash", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && bareJID(p.From) == alice.Bare && p.From != alice.Bare+"/desktop" && p.Avatar != nil && *p.Avatar == hash
	})
}
