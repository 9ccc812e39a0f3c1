package xmppconn

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
)

const nsBlocking = "urn:xmpp:blocking"

// Blocklist returns the bare JIDs the user blocks (XEP-0191). The server
// drops every stanza from them, so their messages never reach the user.
func (c *Conn) Blocklist(ctx context.Context) ([]string, error) {
	inner, err := c.SendIQ(ctx, "get", "", []byte(`<blocklist xmlns="`+nsBlocking+`"/>`))
	if err != nil {
		return nil, err
	}
	var res struct {
		XMLName xml.Name `xml:"urn:xmpp:blocking blocklist"`
		Items   []struct {
			JID string `xml:"jid,attr"`
		} `xml:"item"`
	}
	if err := xml.Unmarshal(inner, &res); err != nil {
		return nil, fmt.Errorf("%w: blocklist reply: %w", ErrProtocol, err)
	}
	out := make([]string, 0, len(res.Items))
	for _, it := range res.Items {
		out = append(out, it.JID)
	}
	return out, nil
}

// Block adds jids to the blocklist.
func (c *Conn) Block(ctx context.Context, jids ...string) error {
	return c.blocking(ctx, "block", jids)
}

// Unblock removes jids from the blocklist.
func (c *Conn) Unblock(ctx context.Context, jids ...string) error {
	return c.blocking(ctx, "unblock", jids)
}

func (c *Conn) blocking(ctx context.Context, op string, jids []string) error {
	if len(jids) == 0 {
		return fmt.Errorf("%w: no JID to %s", ErrInvalidJID, op)
	}
	var b bytes.Buffer
	b.WriteString(`<` + op + ` xmlns="` + nsBlocking + `">`)
	for _, s := range jids {
		j, err := ParseJID(s)
		if err != nil {
			return err
		}
		b.WriteString(`<item jid="`)
		xml.EscapeText(&b, []byte(j.String()))
		b.WriteString(`"/>`)
	}
	b.WriteString(`</` + op + `>`)
	_, err := c.SendIQ(ctx, "set", "", b.Bytes())
	return err
}
