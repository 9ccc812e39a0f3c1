package xmppconn

// Message Carbons (XEP-0280), with Config.Carbons: enabled on every fresh
// stream (a resumed one keeps it) and advertised in disco#info. The
// carbon copies themselves are unwrapped where a message is parsed
// (stanza.go), as they are messages of the user's.
func init() {
	register(&feature{
		name: "carbons",
		disco: func(cfg *Config) []string {
			if cfg.Carbons {
				return []string{nsCarbons}
			}
			return nil
		},
		bound: (*Conn).enableCarbons,
	})
}

// enableCarbons asks the server for carbon copies; a refusal is logged,
// not fatal: the user only misses copies of their other clients' chats.
func (c *Conn) enableCarbons(s *stream) error {
	if !c.cfg.Carbons {
		return nil
	}
	id := c.newID()
	if err := c.writeStanzaOn(s, []byte(`<iq type="set" id="`+id+`"><enable xmlns="`+nsCarbons+`"/></iq>`)); err != nil {
		return err
	}
	if _, err := c.awaitIQ(s, id); err != nil {
		c.log.Warn("xmppconn: enabling carbons failed", "err", err)
	}
	return nil
}
