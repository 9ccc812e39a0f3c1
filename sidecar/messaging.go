package sidecar

import (
	"fmt"
	"net/http"

	"expressolivre.org/imsidecar/xmppconn"
)

// Messaging: POST /v1/messages and POST /v1/chatstates (XEP-0085).

func (a *api) message(w http.ResponseWriter, r *http.Request, c *caller) error {
	var m messageBody
	if err := decode(r, &m, false); err != nil {
		return err
	}
	to, err := validJID(m.To, false)
	if err != nil {
		return err
	}
	if m.Body == "" {
		return fmt.Errorf("%w: body is required", ErrBadRequest)
	}
	if len(m.ID) > 128 || len(m.Thread) > 256 {
		return fmt.Errorf("%w: id or thread too long", ErrBadRequest)
	}
	// xmppconn's rules (type, a groupchat to a bare room JID, no receipt
	// in a room), checked before the stream is touched.
	out, err := xmppconn.Message{To: to, Body: m.Body, Type: m.Type, ID: m.ID, Thread: m.Thread, Receipt: m.Receipt, ChatState: xmppconn.ChatActive}.Outgoing()
	if err != nil {
		return err
	}
	var conn messenger
	_, conn, err = a.mutate(c)
	if err != nil {
		return err
	}
	id, err := conn.Send(r.Context(), out)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, sentOut{ID: id})
	return nil
}

func (a *api) chatState(w http.ResponseWriter, r *http.Request, c *caller) error {
	var body chatStateBody
	if err := decode(r, &body, false); err != nil {
		return err
	}
	to, err := validJID(body.To, false)
	if err != nil {
		return err
	}
	state, err := xmppconn.ParseChatState(body.State)
	if err != nil {
		return err
	}
	var conn messenger
	_, conn, err = a.mutate(c)
	if err != nil {
		return err
	}
	if err := conn.SendChatState(r.Context(), to, state); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
