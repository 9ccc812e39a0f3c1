package sidecar

import (
	"fmt"
	"net/http"

	"expressolivre.org/imsidecar/xmppconn"
)

// The roster and subscriptions: GET /v1/roster (with each contact's
// presences), PUT and DELETE /v1/roster/{jid}, POST
// /v1/subscriptions/{jid}.

func (a *api) roster(w http.ResponseWriter, r *http.Request, c *caller) error {
	var conn rosterEditor
	s, conn, err := a.live(c)
	if err != nil {
		return err
	}
	items, err := conn.Roster(r.Context())
	if err != nil {
		return err
	}
	out := make([]rosterItemOut, 0, len(items))
	for _, it := range items {
		groups := it.Groups
		if groups == nil {
			groups = []string{}
		}
		out = append(out, rosterItemOut{JID: it.JID, Name: it.Name, Groups: groups, Subscription: it.Subscription, Ask: it.Ask, Presence: s.presenceOf(it.JID)})
	}
	writeJSON(w, http.StatusOK, rosterOut{Items: out})
	return nil
}

func (a *api) rosterSet(w http.ResponseWriter, r *http.Request, c *caller) error {
	jid, err := validJID(r.PathValue("jid"), true)
	if err != nil {
		return err
	}
	var body rosterItemBody
	if err := decode(r, &body, true); err != nil {
		return err
	}
	if len(body.Name) > 1024 || len(body.Groups) > 64 {
		return fmt.Errorf("%w: name or groups too long", ErrBadRequest)
	}
	var conn rosterEditor
	_, conn, err = a.mutate(c)
	if err != nil {
		return err
	}
	if err := conn.SetRosterItem(r.Context(), xmppconn.RosterItem{JID: jid, Name: body.Name, Groups: body.Groups}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) rosterRemove(w http.ResponseWriter, r *http.Request, c *caller) error {
	jid, err := validJID(r.PathValue("jid"), true)
	if err != nil {
		return err
	}
	var conn rosterEditor
	_, conn, err = a.mutate(c)
	if err != nil {
		return err
	}
	if err := conn.RemoveRosterItem(r.Context(), jid); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) subscription(w http.ResponseWriter, r *http.Request, c *caller) error {
	jid, err := validJID(r.PathValue("jid"), true)
	if err != nil {
		return err
	}
	var body subscriptionBody
	if err := decode(r, &body, false); err != nil {
		return err
	}
	action, err := xmppconn.ParseSubscriptionAction(body.Action)
	if err != nil {
		return err
	}
	var conn rosterEditor
	_, conn, err = a.mutate(c)
	if err != nil {
		return err
	}
	if err := conn.Subscribe(r.Context(), jid, action); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
