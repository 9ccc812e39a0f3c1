package sidecar

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// maxArchiveID bounds the before/after ids accepted.
const maxArchiveID = 256

// parseHistoryQuery validates the query string of GET /v1/history.
func parseHistoryQuery(v url.Values) (xmppconn.HistoryQuery, error) {
	var q xmppconn.HistoryQuery
	for name, vals := range v {
		switch name {
		case "with", "room", "before", "after", "start", "end", "max":
			if len(vals) > 1 {
				return q, fmt.Errorf("%w: %s given more than once", ErrBadRequest, name)
			}
		default:
			return q, fmt.Errorf("%w: unknown parameter %q", ErrBadRequest, name)
		}
	}
	var err error
	if s := v.Get("with"); s != "" {
		if q.With, err = validJID(s, false); err != nil {
			return q, err
		}
	}
	if s := v.Get("room"); s != "" {
		if q.Room, err = validJID(s, true); err != nil {
			return q, err
		}
	}
	if v.Has("before") {
		q.Last, q.Before = true, v.Get("before") // empty: the newest page (XEP-0059 <before/>)
	}
	q.After = v.Get("after")
	if len(q.Before) > maxArchiveID || len(q.After) > maxArchiveID {
		return q, fmt.Errorf("%w: archive id longer than %d bytes", ErrBadRequest, maxArchiveID)
	}
	for _, p := range []struct {
		name string
		t    *time.Time
	}{{"start", &q.Start}, {"end", &q.End}} {
		s := v.Get(p.name)
		if s == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return q, fmt.Errorf("%w: %s must be an RFC 3339 time such as 2026-01-02T15:04:05Z", ErrBadRequest, p.name)
		}
		*p.t = t
	}
	if !q.Start.IsZero() && !q.End.IsZero() && q.End.Before(q.Start) {
		return q, fmt.Errorf("%w: end is before start", ErrBadRequest)
	}
	if s := v.Get("max"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > xmppconn.MaxHistoryMax {
			return q, fmt.Errorf("%w: max must be 1..%d", ErrBadRequest, xmppconn.MaxHistoryMax)
		}
		q.Max = n
	}
	return q, nil
}

// history reads a page of the user's archive, or of a room's (XEP-0313).
func (a *api) history(w http.ResponseWriter, r *http.Request, c *caller) error {
	q, err := parseHistoryQuery(r.URL.Query())
	if err != nil {
		return err
	}
	var conn archiveReader
	_, conn, err = a.live(c)
	if err != nil {
		return err
	}
	p, err := conn.History(r.Context(), q)
	if err != nil {
		return err
	}
	out := historyPage{Messages: make([]historyMessage, 0, len(p.Messages)), Complete: p.Complete, First: p.First, Last: p.Last}
	if p.Count >= 0 {
		out.Count = &p.Count
	}
	for i := range p.Messages {
		out.Messages = append(out.Messages, newHistoryMessage(&p.Messages[i]))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
