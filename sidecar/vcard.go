package sidecar

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"expressolivre.org/imsidecar/xmppconn"
)

// vCards (XEP-0054): GET /v1/vcard/{jid}, and GET /v1/avatar/{jid}, the
// photo as an image.

// fetchVCard reads a contact's vCard through the caller's stream.
func (a *api) fetchVCard(r *http.Request, c *caller) (xmppconn.VCard, error) {
	jid, err := validJID(r.PathValue("jid"), true)
	if err != nil {
		return xmppconn.VCard{}, err
	}
	var conn vcardReader
	_, conn, err = a.live(c)
	if err != nil {
		return xmppconn.VCard{}, err
	}
	return conn.VCard(r.Context(), jid)
}

// vcard answers a contact's vCard (vcardOut).
func (a *api) vcard(w http.ResponseWriter, r *http.Request, c *caller) error {
	v, err := a.fetchVCard(r, c)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, vcardOut{JID: r.PathValue("jid"), FullName: v.FullName, Nickname: v.Nickname,
		Email: v.Email, PhotoType: v.PhotoType, HasPhoto: len(v.Photo) > 0})
	return nil
}

// avatar serves a contact's vCard photo as an image, cacheable by ETag. It
// is also allowed by cookie so an <img> on the page can load it.
func (a *api) avatar(w http.ResponseWriter, r *http.Request, c *caller) error {
	v, err := a.fetchVCard(r, c)
	if err != nil {
		return err
	}
	if len(v.Photo) == 0 {
		return fmt.Errorf("%w: no avatar", ErrNotFound)
	}
	ctype := http.DetectContentType(v.Photo)
	if !strings.HasPrefix(ctype, "image/") {
		// Never serve a contact's bytes as anything but an image.
		return fmt.Errorf("%w: the vCard photo is not an image", ErrNotFound)
	}
	// The ETag is the XEP-0153 hash that presence events carry as avatar.
	etag := `"` + xmppconn.AvatarHash(v.Photo) + `"`
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Cache-Control", "private, max-age=300")
	h.Set("X-Content-Type-Options", "nosniff")
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	h.Set("Content-Type", ctype)
	h.Set("Content-Length", strconv.Itoa(len(v.Photo)))
	w.WriteHeader(http.StatusOK)
	w.Write(v.Photo)
	return nil
}
