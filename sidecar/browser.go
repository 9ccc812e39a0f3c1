package sidecar

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"expressolivre.org/imsidecar/phpsession"
)

// How a browser stream (BOSH, WebSocket) is authorised:
//
//   - every request's Origin, when it has one, must be allowed
//     (--allowed-origins; by default the host the request was sent to,
//     Host or X-Forwarded-Host): no cross-site WebSocket hijacking, no
//     blind cross-site BOSH posts;
//   - a stream is opened with the PHP session cookie, and then also the
//     API token when --api-token-file is set (the site's Apache adds it,
//     as for the cookie routes; the browser never sees it);
//   - a BOSH request of an open session is authorised by its sid: 160
//     random bits minted by an authorised call (the cookie one above, or
//     POST /v1/prebind with X-Session-Id). If it carries a session cookie
//     too, that must be the sid's own PHP session, still logged in.

// originAllowed checks the Origin header.
func (a *api) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true // not a browser's cross-site request
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	if len(a.cfg.allowedOrigins) > 0 {
		for _, o := range a.cfg.allowedOrigins {
			if strings.EqualFold(o, u.Scheme+"://"+u.Host) {
				return true
			}
		}
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	fwd, _, _ := strings.Cut(r.Header.Get("X-Forwarded-Host"), ",")
	return fwd != "" && strings.EqualFold(u.Host, strings.TrimSpace(fwd))
}

// browserHandler serves a browser stream endpoint: the drain, the method
// and the Origin are checked, then h runs; its error is answered, and the
// request logged and measured, as wrap does for the /v1 calls.
func (a *api) browserHandler(route, method string, h func(http.ResponseWriter, *http.Request) (user string, err error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, start: start}
		var user string
		var err error
		switch {
		case a.draining.Load():
			err = ErrShuttingDown
		case r.Method != method:
			rec.Header().Set("Allow", method)
			rec.WriteHeader(http.StatusMethodNotAllowed)
		case !a.originAllowed(r):
			err = ErrForbiddenOrigin
		default:
			// In cluster mode a stream of a session another node owns
			// is served there (clusterbrowser.go).
			done := false
			routed := a.cluster != nil && !a.peer
			if routed {
				done, err = a.browserRoute(rec, r, route)
			}
			if !done && err == nil {
				user, err = h(rec, r)
			}
			if routed && !done && a.routeAgain(err, rec, r) {
				if done, err = a.browserRoute(rec, r, route); !done && err == nil {
					user, err = h(rec, r)
				}
			}
		}
		if err == errParked {
			return // the parker answers, logs and measures it (boshpark.go)
		}
		if err != nil {
			a.writeError(rec, r, err, nil)
		}
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		a.record(r.Context(), route, status, start, user)
	})
}

// tokenOK checks the API token, when one is configured.
func (a *api) tokenOK(r *http.Request) bool {
	if a.token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(a.token)) == 1
}

// cookieID returns the PHP session id of the request's cookie.
func (a *api) cookieID(r *http.Request) (string, bool) {
	return phpsession.IDFromCookie(strings.Join(r.Header.Values("Cookie"), "; "), a.cfg.SessionCookie)
}

// browserSession returns the live stream of the request's PHP session
// cookie, opening it as POST /v1/connect does. A login it starts is the
// registry's (connectOwned), not the request's: a browser that gives up
// on its session creation or WebSocket upgrade while the Jabber server is
// slow (a node's users reconnecting through the others at once) and
// tries again finds the login still running, or done, rather than cut
// half-way and started over.
func (a *api) browserSession(r *http.Request) (*session, error) {
	if !a.tokenOK(r) {
		return nil, ErrUnauthorized
	}
	id, ok := a.cookieID(r)
	if !ok {
		return nil, ErrSessionMissing
	}
	ps, err := a.reader.Lookup(r.Context(), id)
	if err != nil {
		return nil, err
	}
	s, _, err := a.reg.connectOwned(r.Context(), id, ps, nil)
	if err != nil {
		return nil, err
	}
	a.reg.remember(s, id)
	s.lastPoll.Store(time.Now().UnixNano())
	return s, nil
}

// sameBrowserSession checks a request for s's stream: without a session
// cookie the sid alone authorises it; with one, the cookie must name s's
// PHP session (else foreign), still logged in as s's user (else ended
// says why the session is over: logged_out, session_expired, ...).
func (a *api) sameBrowserSession(r *http.Request, s *session) (foreign bool, ended string) {
	id, ok := a.cookieID(r)
	if !ok {
		return false, ""
	}
	h := phpsession.Hash(id) // once: the sid's owner check and the session check
	if !isKeyOf(h, s.key) {
		return true, ""
	}
	ps, err := a.reader.LookupHashed(r.Context(), h)
	switch {
	case errors.Is(err, phpsession.ErrUnavailable):
		return false, "" // the store is down: keep users chatting
	case errors.Is(err, phpsession.ErrNotFound):
		return false, "logged_out"
	case errors.Is(err, phpsession.ErrExpired):
		return false, "session_expired"
	case err != nil:
		return false, "not_logged_in"
	case ps.Identity.User != s.user:
		return false, "user_changed"
	}
	return false, ""
}

// isKeyOf reports whether key is keyOf(h), without building the string.
func isKeyOf(h phpsession.HashedID, key string) bool {
	sum := h.Sum()
	var buf [2 * len(sum)]byte
	hex.Encode(buf[:], sum[:])
	return string(buf[:]) == key
}

// checkAuth checks a SASL <auth> element from a browser: PLAIN, for the
// session's own user (see checkPlain).
func checkAuth(raw []byte, user, bare string) bool {
	d := xml.NewDecoder(bytes.NewReader(raw))
	d.Strict = true
	var el struct {
		Mechanism string `xml:"mechanism,attr"`
		Text      string `xml:",chardata"`
	}
	if err := d.Decode(&el); err != nil || el.Mechanism != "PLAIN" {
		return false
	}
	ok := checkPlain(el.Text, user, bare)
	el.Text = ""
	return ok
}

// decodeBase64 decodes a SASL payload leniently about padding: "=" is an
// empty one (RFC 6120 §6.4.2), and Expresso 2.5's messenger appends "=="
// to an already padded blob.
func decodeBase64(s string) ([]byte, error) {
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, fmt.Errorf("%w: base64", ErrBadRequest)
	}
	return b, nil
}
