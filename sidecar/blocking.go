package sidecar

import (
	"net/http"
)

// Blocking (XEP-0191): GET /v1/blocklist, PUT and DELETE
// /v1/blocklist/{jid}.

// blocklist lists the blocked JIDs (XEP-0191).
func (a *api) blocklist(w http.ResponseWriter, r *http.Request, c *caller) error {
	var conn blocker
	_, conn, err := a.live(c)
	if err != nil {
		return err
	}
	items, err := conn.Blocklist(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, blocklistOut{Items: items})
	return nil
}

// block blocks a JID: the server drops everything it sends to the user.
func (a *api) block(w http.ResponseWriter, r *http.Request, c *caller) error {
	return a.blocking(w, r, c, true)
}

func (a *api) unblock(w http.ResponseWriter, r *http.Request, c *caller) error {
	return a.blocking(w, r, c, false)
}

func (a *api) blocking(w http.ResponseWriter, r *http.Request, c *caller, block bool) error {
	jid, err := validJID(r.PathValue("jid"), false)
	if err != nil {
		return err
	}
	var conn blocker
	_, conn, err = a.mutate(c)
	if err != nil {
		return err
	}
	if block {
		err = conn.Block(r.Context(), jid)
	} else {
		err = conn.Unblock(r.Context(), jid)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
