package sidecar_test

import (
	"bytes"
	"encoding/base64"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"testing"
)

// TestE2EVCardAvatar (issue 8 §4): a desktop user publishes a vCard with a
// photo; the web user reads it and gets the avatar as a cacheable image.
func TestE2EVCardAvatar(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{})
	e.register(t, "alice", "bob")
	alice := e.login(t, "alice")
	alice.connect(t)
	bob := dialDesktop(t, e.XMPP, "bob")

	img := image.NewRGBA(image.Rect(0, 0, 8, 8))
	for i := range 8 {
		img.Set(i, i, color.RGBA{200, 30, 30, 255})
	}
	var pngBytes bytes.Buffer
	if err := png.Encode(&pngBytes, img); err != nil {
		t.Fatal(err)
	}
	vcard := `<vCard xmlns="vcard-temp"><FN>Bob Brandão</FN><NICKNAME>bob</NICKNAME>` +
		`<EMAIL><INTERNET/><USERID>bob@example.test</USERID></EMAIL>` +
		`<PHOTO><TYPE>image/png</TYPE><BINVAL>` + base64.StdEncoding.EncodeToString(pngBytes.Bytes()) + `</BINVAL></PHOTO></vCard>`
	if _, err := bob.Conn.SendIQ(t.Context(), "set", "", []byte(vcard)); err != nil {
		t.Fatalf("publish vCard: %v", err)
	}

	var v struct {
		FullName  string `json:"fullname"`
		Email     string `json:"email"`
		PhotoType string `json:"photo_type"`
		HasPhoto  bool   `json:"has_photo"`
	}
	alice.C.mustCall(t, "GET", "/v1/vcard/"+url.PathEscape(bob.Bare), nil, &v, http.StatusOK)
	if v.FullName != "Bob Brandão" || v.Email != "bob@example.test" || !v.HasPhoto || v.PhotoType != "image/png" {
		t.Fatalf("vcard = %+v", v)
	}

	req, _ := http.NewRequestWithContext(t.Context(), "GET", e.D.URL+"/v1/avatar/"+url.PathEscape(bob.Bare), nil)
	req.Header.Set("Cookie", "sessionid="+alice.SID)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" || !bytes.Equal(body, pngBytes.Bytes()) || resp.Header.Get("ETag") == "" {
		t.Fatalf("avatar: %d %v (%d bytes)", resp.StatusCode, resp.Header, len(body))
	}
}
