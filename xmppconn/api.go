package xmppconn

import (
	"bytes"
	"context"
	"fmt"
	"strings"
)

// Send sends a message and returns its id (generated when m.ID is empty).
// m is checked and completed by Message.Outgoing (m.Type "" is
// ChatMessage; a groupchat message goes to a bare room JID and never asks
// for a receipt), and a groupchat's room must be joined (ErrNotInRoom). While the stream is down the message is
// queued (up to Config.MaxQueue) and sent once it is back.
func (c *Conn) Send(ctx context.Context, m Message) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	m, err := m.Outgoing()
	if err != nil {
		return "", err
	}
	if m.Type == GroupChatMessage && !c.InRoom(m.To) {
		return "", fmt.Errorf("%w: %s", ErrNotInRoom, m.To)
	}
	if m.ID == "" {
		m.ID = c.newID()
	}
	if err := c.send(encodeMessage(m), true); err != nil {
		return "", err
	}
	return m.ID, nil
}

// SendPresence broadcasts our presence (p.To empty) or sends a directed
// presence. Type is "available" (or empty) or "unavailable"; p is checked
// as Presence.Validate says.
func (c *Conn) SendPresence(ctx context.Context, p Presence) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	if p.To != "" {
		to, err := validJID(p.To)
		if err != nil {
			return err
		}
		p.To = to
	} else {
		shown := p
		if p.Type != "unavailable" && p.Avatar == nil {
			p.Avatar = c.ownAvatar.Load()
		}
		// Checked before it is kept: every fresh stream sends it again.
		if err := c.sendable(encodePresence(p)); err != nil {
			return err
		}
		c.lastShown.Store(&shown)
		defer c.saveState()
	}
	return c.sendPresenceEverywhere(p)
}

// sendPresenceEverywhere sends p and, when it is a broadcast available
// presence, the same show and status to every joined room: MUC services do
// not forward a user's broadcast presence to the rooms.
func (c *Conn) sendPresenceEverywhere(p Presence) error {
	if err := c.send(encodePresence(p), true); err != nil || p.To != "" || p.Type == "unavailable" {
		return err
	}
	for _, raw := range c.broadcasts(p) {
		if err := c.send(raw, true); err != nil {
			return err
		}
	}
	return nil
}

// SetAvatarHash advertises the user's own avatar (XEP-0153): hash is the
// SHA-1 of their vCard photo in hex (AvatarHash), "" for none. Every
// broadcast presence carries it from now on, and the current presence (the
// last broadcast one, else the initial one) is sent again with it, except
// when a first hash is "": contacts lose nothing by learning it later.
func (c *Conn) SetAvatarHash(ctx context.Context, hash string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	hash = strings.ToLower(hash)
	if hash != "" && !isSHA1Hex(hash) {
		return fmt.Errorf("%w: avatar hash %q is not a SHA-1 in hex", ErrInvalidArgument, hash)
	}
	if old := c.ownAvatar.Swap(&hash); old != nil && *old == hash || old == nil && hash == "" {
		return nil
	}
	p := c.currentPresence()
	if p.Type == "unavailable" {
		return nil
	}
	if p.Avatar == nil {
		p.Avatar = &hash
	}
	return c.sendPresenceEverywhere(p)
}

// freshPresence is the presence a fresh stream broadcasts: the one the
// user last chose, not the initial one (a fresh stream after a lost one
// must not turn "away" back into "available"), with the avatar hash.
// ok is false for a user who broadcast unavailable: they stay so.
func (c *Conn) freshPresence() (p Presence, ok bool) {
	p = c.currentPresence()
	if p.Type == "unavailable" {
		return p, false
	}
	if p.Avatar == nil {
		p.Avatar = c.ownAvatar.Load()
	}
	return p, true
}

// currentPresence is the user's broadcast presence: the last one sent,
// else the initial one.
func (c *Conn) currentPresence() Presence {
	if last := c.lastShown.Load(); last != nil {
		return *last
	}
	if c.cfg.InitialPresence != nil {
		return *c.cfg.InitialPresence
	}
	return Presence{}
}

// Subscribe manages a presence subscription with jid (RFC 6121 §3):
// action is one ParseSubscriptionAction accepts, else an
// ErrInvalidArgument.
func (c *Conn) Subscribe(ctx context.Context, jid string, action SubscriptionAction) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	action, err := ParseSubscriptionAction(string(action))
	if err != nil {
		return err
	}
	to, err := ParseJID(jid)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	b.WriteString(`<presence`)
	attr(&b, "to", to.Bare().String())
	attr(&b, "type", action.presenceType())
	b.WriteString(`/>`)
	return c.send(b.Bytes(), true)
}

// SendChatState sends a standalone XEP-0085 chat state: one
// ParseChatState accepts, else an ErrInvalidArgument.
func (c *Conn) SendChatState(ctx context.Context, to string, state ChatStateKind) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	state, err := ParseChatState(string(state))
	if err != nil {
		return err
	}
	j, err := validJID(to)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	b.WriteString(`<message type="chat"`)
	attr(&b, "to", j)
	b.WriteString(`><` + string(state) + ` xmlns="` + nsChat + `"/><no-store xmlns="urn:xmpp:hints"/></message>`)
	return c.send(b.Bytes(), true)
}

// Roster fetches the roster.
func (c *Conn) Roster(ctx context.Context) ([]RosterItem, error) {
	n, err := c.iq(ctx, "get", "", []byte(`<query xmlns="`+nsRoster+`"/>`))
	if err != nil {
		return nil, err
	}
	q := n.child(nsRoster, "query")
	if q == nil {
		return []RosterItem{}, nil
	}
	items := parseRosterItems(q)
	if items == nil {
		items = []RosterItem{}
	}
	return items, nil
}

// SetRosterItem adds or updates a roster item (JID, Name, Groups). It does
// not subscribe; use Subscribe for that.
func (c *Conn) SetRosterItem(ctx context.Context, it RosterItem) error {
	j, err := ParseJID(it.JID)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	b.WriteString(`<query xmlns="` + nsRoster + `"><item`)
	attr(&b, "jid", j.Bare().String())
	attr(&b, "name", it.Name)
	b.WriteByte('>')
	seen := map[string]bool{}
	for _, g := range it.Groups {
		if g == "" || seen[g] {
			continue
		}
		seen[g] = true
		b.WriteString(`<group>`)
		esc(&b, g)
		b.WriteString(`</group>`)
	}
	b.WriteString(`</item></query>`)
	_, err = c.iq(ctx, "set", "", b.Bytes())
	return err
}

// RemoveRosterItem removes jid from the roster (and, per RFC 6121, cancels
// subscriptions both ways).
func (c *Conn) RemoveRosterItem(ctx context.Context, jid string) error {
	j, err := ParseJID(jid)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	b.WriteString(`<query xmlns="` + nsRoster + `"><item`)
	attr(&b, "jid", j.Bare().String())
	b.WriteString(` subscription="remove"/></query>`)
	_, err = c.iq(ctx, "set", "", b.Bytes())
	return err
}
