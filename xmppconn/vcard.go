package xmppconn

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"strings"
)

const nsVCard = "vcard-temp"

// VCard is the part of a XEP-0054 vcard-temp the web app shows.
type VCard struct {
	FullName  string
	Nickname  string
	Email     string
	PhotoType string // MIME type of Photo, e.g. "image/png"
	Photo     []byte
}

// MaxPhotoSize bounds an avatar accepted from a vCard.
const MaxPhotoSize = 512 << 10

// VCard fetches the vCard of a bare JID ("" for the user's own).
func (c *Conn) VCard(ctx context.Context, jid string) (VCard, error) {
	if jid != "" {
		j, err := ParseJID(jid)
		if err != nil {
			return VCard{}, err
		}
		jid = j.Bare().String()
	}
	inner, err := c.SendIQ(ctx, "get", jid, []byte(`<vCard xmlns="`+nsVCard+`"/>`))
	if err != nil {
		return VCard{}, err
	}
	var v struct {
		XMLName  xml.Name `xml:"vcard-temp vCard"`
		FN       string   `xml:"FN"`
		Nickname string   `xml:"NICKNAME"`
		Emails   []struct {
			UserID string `xml:"USERID"`
		} `xml:"EMAIL"`
		Photo struct {
			Type   string `xml:"TYPE"`
			BinVal string `xml:"BINVAL"`
		} `xml:"PHOTO"`
	}
	if len(strings.TrimSpace(string(inner))) == 0 {
		return VCard{}, nil // no vCard stored: an empty one
	}
	if err := xml.Unmarshal(inner, &v); err != nil {
		return VCard{}, fmt.Errorf("%w: vCard reply: %w", ErrProtocol, err)
	}
	out := VCard{FullName: strings.TrimSpace(v.FN), Nickname: strings.TrimSpace(v.Nickname)}
	for _, e := range v.Emails {
		if e.UserID != "" {
			out.Email = strings.TrimSpace(e.UserID)
			break
		}
	}
	if b64 := strings.Join(strings.Fields(v.Photo.BinVal), ""); b64 != "" {
		if base64.StdEncoding.DecodedLen(len(b64)) > MaxPhotoSize {
			return VCard{}, fmt.Errorf("%w: vCard photo over %d bytes", ErrProtocol, MaxPhotoSize)
		}
		photo, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return VCard{}, fmt.Errorf("%w: vCard photo: %w", ErrProtocol, err)
		}
		out.Photo, out.PhotoType = photo, strings.TrimSpace(v.Photo.Type)
	}
	return out, nil
}

// nsVCardUpdate carries vCard avatar hashes in presence (XEP-0153).
const nsVCardUpdate = "vcard-temp:x:update"

// AvatarHash is the XEP-0153 hash of a vCard photo: SHA-1 of the image
// bytes in lower-case hex, "" for no photo.
func AvatarHash(photo []byte) string {
	if len(photo) == 0 {
		return ""
	}
	sum := sha1.Sum(photo)
	return hex.EncodeToString(sum[:])
}

// parseAvatarHash reads the XEP-0153 photo hash of a presence: nil when
// the presence does not say (no <x/>, no <photo/>, or not a SHA-1), "" for
// no avatar.
func parseAvatarHash(n *node) *string {
	photo := n.child(nsVCardUpdate, "x").child(nsVCardUpdate, "photo")
	if photo == nil {
		return nil
	}
	h := strings.ToLower(strings.TrimSpace(photo.text))
	if h != "" && !isSHA1Hex(h) {
		return nil
	}
	return &h
}

func isSHA1Hex(s string) bool {
	if len(s) != 2*sha1.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}
