package sidecar

import (
	"context"
	"errors"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// The expiry watch: the janitor, which ties each stream to its PHP
// session, and the session ids it re-reads them through.

// janitor re-reads every connected PHP session each RecheckInterval and
// closes the streams whose session is gone, expired, logged out or now
// someone else's, or whose page stopped polling. It returns when ctx ends.
func (r *registry) janitor(ctx context.Context) {
	t := time.NewTicker(r.cfg.RecheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.sweep(ctx)
		}
	}
}

// sweep is one janitor pass. Session ids are not kept, only their hashes,
// so the janitor asks the reader through the ids the API last saw.
func (r *registry) sweep(ctx context.Context) {
	r.mu.Lock()
	list := make([]*session, 0, len(r.sessions))
	for _, s := range r.sessions {
		list = append(list, s)
	}
	r.mu.Unlock()
	now := time.Now()
	for _, s := range list {
		if ctx.Err() != nil {
			return
		}
		s.log.trim()
		st := s.State()
		if st == xmppconn.StateOffline || st == xmppconn.StateAuthFailed {
			if now.Sub(time.Unix(0, s.lastPoll.Load())) > r.cfg.Inactivity {
				r.forget(s)
			}
			continue
		}
		if now.Sub(time.Unix(0, s.lastPoll.Load())) > r.cfg.Inactivity {
			r.closeSession(s, "inactive")
			continue
		}
		id := r.idOf(s)
		if id == "" {
			continue
		}
		start := time.Now()
		ps, err := r.reader.Lookup(ctx, id)
		r.metrics.storeLatency.Observe(time.Since(start).Seconds())
		switch {
		case errors.Is(err, phpsession.ErrUnavailable):
			// The store is down: keep users chatting, decide later.
			continue
		case errors.Is(err, phpsession.ErrNotFound):
			r.closeSession(s, "logged_out")
		case errors.Is(err, phpsession.ErrExpired):
			r.closeSession(s, "session_expired")
		case err != nil:
			r.closeSession(s, "not_logged_in")
		case ps.Identity.User != s.user:
			r.closeSession(s, "user_changed")
		case credentials(ps.Identity) != s.cred:
			// Same user, new password: a fresh stream with the new one.
			r.closeSession(s, "password_changed")
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if _, _, err := r.connect(dctx, id, ps, nil); err != nil {
					r.logger.Warn("reconnect after password change", "user", s.user, "session", s.short, "err", err)
				}
			}()
		}
	}
}

func (r *registry) remember(s *session, id string) {
	r.idsMu.Lock()
	defer r.idsMu.Unlock()
	if r.ids == nil {
		r.ids = map[string]string{}
	}
	r.ids[s.key] = id
}

func (r *registry) idOf(s *session) string {
	r.idsMu.Lock()
	defer r.idsMu.Unlock()
	return r.ids[s.key]
}

func (r *registry) forget(s *session) {
	r.mu.Lock()
	if r.sessions[s.key] == s {
		delete(r.sessions, s.key)
		r.mem.release(s.log)
	}
	r.mu.Unlock()
	r.idsMu.Lock()
	delete(r.ids, s.key)
	r.idsMu.Unlock()
}
