package sidecar

import (
	"context"
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
	var body rosterItemBody
	return a.rosterEdit(w, r, c, func() error {
		if err := decode(r, &body, true); err != nil {
			return err
		}
		if len(body.Name) > 1024 || len(body.Groups) > 64 {
			return fmt.Errorf("%w: name or groups too long", ErrBadRequest)
		}
		return nil
	}, func(ctx context.Context, conn rosterEditor, jid string) error {
		return conn.SetRosterItem(ctx, xmppconn.RosterItem{JID: jid, Name: body.Name, Groups: body.Groups})
	})
}

func (a *api) rosterRemove(w http.ResponseWriter, r *http.Request, c *caller) error {
	return a.rosterEdit(w, r, c, nil, func(ctx context.Context, conn rosterEditor, jid string) error {
		return conn.RemoveRosterItem(ctx, jid)
	})
}

func (a *api) subscription(w http.ResponseWriter, r *http.Request, c *caller) error {
	var action xmppconn.SubscriptionAction
	return a.rosterEdit(w, r, c, func() error {
		var body subscriptionBody
		if err := decode(r, &body, false); err != nil {
			return err
		}
		var err error
		action, err = xmppconn.ParseSubscriptionAction(body.Action)
		return err
	}, func(ctx context.Context, conn rosterEditor, jid string) error {
		return conn.Subscribe(ctx, jid, action)
	})
}

// rosterEdit is the shape the roster's writes share: the contact's bare
// JID from the path, then the request's body (read, when there is one,
// before the session is touched, so a bad one costs no rate-limit token),
// then one edit on the rate-limited live stream, answered 204 No Content.
func (a *api) rosterEdit(w http.ResponseWriter, r *http.Request, c *caller, body func() error, edit func(ctx context.Context, conn rosterEditor, jid string) error) error {
	jid, err := validJID(r.PathValue("jid"), true)
	if err != nil {
		return err
	}
	if body != nil {
		if err := body(); err != nil {
			return err
		}
	}
	var conn rosterEditor
	_, conn, err = a.mutate(c)
	if err != nil {
		return err
	}
	if err := edit(r.Context(), conn, jid); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
