package sidecar

import (
	"net/http"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// The session calls: POST /v1/connect opens (or reuses) the caller's
// stream, POST /v1/disconnect closes it, GET /v1/me says who the caller is
// and how the stream stands.

func (a *api) connect(w http.ResponseWriter, r *http.Request, c *caller) error {
	var body presenceBody
	if err := decode(r, &body, true); err != nil {
		return err
	}
	initial, err := body.toXMPP()
	if err != nil {
		return err
	}
	s, fresh, err := a.reg.connect(r.Context(), c.id, c.php, &initial)
	if err != nil {
		return err
	}
	a.reg.remember(s, c.id)
	s.lastPoll.Store(time.Now().UnixNano())
	cur := s.log.head()
	if fresh {
		// A new stream: the caller starts before its first event, so the
		// presences that arrived while connecting are not skipped.
		cur = s.start
	} else if body != (presenceBody{}) {
		var conn presenceSender
		conn, err := s.stream()
		if err != nil {
			return err
		}
		if err := conn.SendPresence(r.Context(), initial); err != nil {
			return err
		}
	}
	s.mu.Lock()
	jid := s.fullJID
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, connectOut{JID: jid, State: string(s.State()), Cursor: cur.String()})
	return nil
}

func (a *api) disconnect(w http.ResponseWriter, _ *http.Request, c *caller) error {
	a.reg.disconnect(c.id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) me(w http.ResponseWriter, _ *http.Request, c *caller) error {
	ident := c.php.Identity
	state := string(xmppconn.StateOffline)
	jid := ident.User + "@" + a.cfg.XMPPDomain
	if s := a.reg.byKey(c.key); s != nil && s.user == ident.User {
		state = string(s.State())
		s.mu.Lock()
		if s.fullJID != "" {
			jid = s.fullJID
		}
		s.mu.Unlock()
	}
	writeJSON(w, http.StatusOK, meOut{User: ident.User, JID: jid, FullName: ident.FullName, Email: ident.Email, State: state})
	return nil
}
