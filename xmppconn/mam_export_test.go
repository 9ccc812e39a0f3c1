package xmppconn

// SendRaw writes a stanza as is, for integration tests that need stanzas
// the API does not build (joining a room before MUC support, forgeries).
func (c *Conn) SendRaw(raw string) error { return c.send([]byte(raw), true) }
