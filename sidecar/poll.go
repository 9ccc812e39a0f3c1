package sidecar

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// GET /v1/events as a JSON long poll (park.go holds the waiting ones;
// sse.go serves the same events as Server-Sent Events), and the resume of
// a session an earlier run of the daemon had.

func (a *api) events(w http.ResponseWriter, r *http.Request, c *caller) error {
	q := r.URL.Query()
	raw := q.Get("cursor")
	if raw == "" {
		raw = r.Header.Get("Last-Event-ID")
	}
	cur, given, curErr := parseCursor(raw)
	s, err := a.session(c)
	if errors.Is(err, ErrNotConnected) && curErr == nil && given && !c.byCookie && fromEarlierRun(cur) {
		s, err = a.resume(r, c)
	}
	if err != nil {
		return err
	}
	if curErr != nil {
		return curErr
	}
	wait := 25 * time.Second
	if v := q.Get("wait"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 55 {
			return fmt.Errorf("%w: wait must be 0..55 seconds", ErrBadRequest)
		}
		wait = time.Duration(n) * time.Second
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return fmt.Errorf("%w: limit must be 1..1000", ErrBadRequest)
		}
		limit = n
	}
	// One session (a page in a loop, a hostile script) must not hold every
	// API connection: its polls in flight are capped, and the one over the
	// cap is answered at once and its connection closed, so the slot goes
	// back to other users.
	if !s.acquirePoll(a.cfg.MaxPolls) {
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		return ErrTooManyPolls
	}
	parked := false
	defer func() {
		if !parked {
			s.releasePoll()
		}
	}()
	s.lastPoll.Store(time.Now().UnixNano())
	if strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		return a.stream(w, r, s, cur, given)
	}
	res := s.log.read(cur, given, limit)
	if len(res.events) == 0 && wait > 0 {
		// Nothing yet: the poll waits parked, holding no goroutine and
		// no buffer of net/http's, or, where it cannot be, here. A parked
		// poll counts against the cap until it is answered (park.go).
		if a.park(w, r, c, s, pollQuery{cur, given, limit}, wait) {
			parked = true
			return errParked
		}
		res = s.log.poll(r.Context(), cur, given, wait, limit)
	}
	s.lastPoll.Store(time.Now().UnixNano())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	io.WriteString(w, eventsPage(res))
	return nil
}

// resume reconnects a session whose page polls with a cursor an earlier
// run of the daemon gave it: the daemon was restarted (a package upgrade)
// and lost its registry, but the user was online and nothing of theirs
// asked to go offline, so their next poll brings them back, with the
// default presence, and answers recovered:false (the cursor is from another
// epoch). In cluster mode this is also the poll of a session whose lease
// this node holds with no stream (the takeover's first login failed, or its
// caller gave up): the login then resumes the session from Redis. Either
// way the login is the registry's (connectOwned): a poll that gives up
// does not cut it. Only server-side calls get here, never a cookie call:
// those change no state (see routes).
func (a *api) resume(r *http.Request, c *caller) (*session, error) {
	s, _, err := a.reg.connectOwned(r.Context(), c.id, c.php, func(s *session) {
		// Said once, by the login: the page's other polls, waiting on
		// it, find the session it opened.
		a.logger.Info("session resumed after a restart", "user", s.user, "session", s.short)
	})
	if err != nil {
		return nil, err
	}
	a.reg.remember(s, c.id)
	return s, nil
}

// eventsPage is the JSON answer of GET /v1/events.
func eventsPage(res pollResult) string {
	var b strings.Builder
	b.WriteString(`{"events":`)
	encodeEvents(&b, res.cursor.epoch, res.events)
	b.WriteString(`,"cursor":"`)
	b.WriteString(res.cursor.String())
	b.WriteString(`","recovered":`)
	b.WriteString(strconv.FormatBool(res.recovered))
	b.WriteString("}\n")
	return b.String()
}
