package sidecar

import (
	"net/http"
)

// Presence: POST /v1/presence sets the user's own presence.

func (a *api) presence(w http.ResponseWriter, r *http.Request, c *caller) error {
	var body presenceBody
	if err := decode(r, &body, false); err != nil {
		return err
	}
	p, err := body.toXMPP()
	if err != nil {
		return err
	}
	var conn presenceSender
	_, conn, err = a.mutate(c)
	if err != nil {
		return err
	}
	if err := conn.SendPresence(r.Context(), p); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
