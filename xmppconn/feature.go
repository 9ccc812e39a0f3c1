package xmppconn

// An extension in a file of its own (muc.go, mam.go, carbons.go) hooks
// into the core through a feature it registers at init. The core (the
// dispatch of inbound stanzas, the disco#info answer, the steps of a fresh
// stream, the Tap, the broadcast of the user's presence) iterates the
// registered features and never names an extension's functions. Per-Conn
// state stays on the Conn. Every hook is optional.
type feature struct {
	name string

	// disco lists the disco#info features (XEP-0030) the Conn advertises
	// for the extension under cfg.
	disco func(cfg *Config) []string

	// inbound is offered every inbound message and presence before the
	// core handles it, and reports whether it consumed the stanza (which
	// then reaches neither the core nor the other features).
	inbound func(c *Conn, s *stream, n *node) bool
	// deliver is asked about each parsed message (a carbon unwrapped)
	// before the Handler may get it; false drops it. It may complete m (a
	// room's message sets Own).
	deliver func(c *Conn, m *Message, hasSubject bool) bool
	// owns reports whether an inbound message answers the Conn's own
	// request, so that Config.Tap does not hand it to the user's clients.
	owns func(c *Conn, n *node) bool

	// bound runs on a fresh (not resumed) stream once it is bound and
	// stream management is enabled, before the roster and the presence.
	bound func(c *Conn, s *stream) error
	// restore runs on a fresh stream after the presence: it redoes what
	// the server forgot with the old session (rooms joined), before the
	// old stream's unacknowledged stanzas are re-sent.
	restore func(c *Conn, s *stream) error
	// restored reports whether an unacknowledged stanza of the old stream
	// was redone by restore and must not be re-sent.
	restored func(raw []byte) bool

	// broadcast returns the stanzas that carry the user's broadcast
	// available presence p where the server does not (rooms); the feature
	// may record p.
	broadcast func(c *Conn, p Presence) [][]byte
}

// features are the registered extensions, in registration order (the
// order of their files' init). No two of them claim the same stanza, so
// the order shows only in the disco#info list.
var features []*feature

// register adds an extension's hooks; it is called from init only.
func register(f *feature) { features = append(features, f) }

// baseDisco are the features the core itself implements.
var baseDisco = []string{nsDiscoI, nsPing, nsVersion, nsReceipts, nsChat}

// discoFeatures lists what the Conn advertises in disco#info: the core's
// features, then each registered extension's.
func discoFeatures(cfg *Config) []string {
	out := append([]string(nil), baseDisco...)
	for _, f := range features {
		if f.disco != nil {
			out = append(out, f.disco(cfg)...)
		}
	}
	return out
}

// claimed offers an inbound message or presence to the features and
// reports whether one consumed it.
func (c *Conn) claimed(s *stream, n *node) bool {
	for _, f := range features {
		if f.inbound != nil && f.inbound(c, s, n) {
			return true
		}
	}
	return false
}

// deliverable asks the features whether a parsed message reaches the
// Handler.
func (c *Conn) deliverable(m *Message, hasSubject bool) bool {
	for _, f := range features {
		if f.deliver != nil && !f.deliver(c, m, hasSubject) {
			return false
		}
	}
	return true
}

// ownedByFeature reports whether a feature claims an inbound message as
// the answer to its own request.
func (c *Conn) ownedByFeature(n *node) bool {
	for _, f := range features {
		if f.owns != nil && f.owns(c, n) {
			return true
		}
	}
	return false
}

// freshBound runs the features' bound hooks on a fresh stream.
func (c *Conn) freshBound(s *stream) error {
	for _, f := range features {
		if f.bound != nil {
			if err := f.bound(c, s); err != nil {
				return err
			}
		}
	}
	return nil
}

// freshRestore runs the features' restore hooks on a fresh stream.
func (c *Conn) freshRestore(s *stream) error {
	for _, f := range features {
		if f.restore != nil {
			if err := f.restore(c, s); err != nil {
				return err
			}
		}
	}
	return nil
}

// restoredByFeature reports whether a restore hook already redid raw.
func restoredByFeature(raw []byte) bool {
	for _, f := range features {
		if f.restored != nil && f.restored(raw) {
			return true
		}
	}
	return false
}

// broadcasts returns what the features send with a broadcast available
// presence.
func (c *Conn) broadcasts(p Presence) [][]byte {
	var out [][]byte
	for _, f := range features {
		if f.broadcast != nil {
			out = append(out, f.broadcast(c, p)...)
		}
	}
	return out
}
