package sidecar

import (
	"errors"
	"net/http"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// Sentinel errors of the HTTP API. statusFor maps them, and those of
// phpsession and xmppconn, to HTTP statuses and the JSON error codes that
// are part of the public API (docs/API.md).
var (
	ErrBadRequest     = errors.New("sidecar: bad request")
	ErrSessionMissing = errors.New("sidecar: no session id")
	ErrUnauthorized   = errors.New("sidecar: missing or wrong API token")
	ErrNotFound       = errors.New("sidecar: not found")
	ErrNotConnected   = errors.New("sidecar: not connected")
	ErrTooLarge       = errors.New("sidecar: request body too large")
	ErrRateLimited    = errors.New("sidecar: rate limited")
	ErrShuttingDown   = errors.New("sidecar: shutting down")
	// ErrAuthThrottled: the XMPP authentication failure budget
	// (--auth-failure-limit an hour) had no unit free for a login before
	// its context ended, held by failures of the last hour or by logins
	// in flight (the error says how many of each); the password was not
	// sent to the server.
	ErrAuthThrottled = errors.New("sidecar: XMPP authentication throttled (--auth-failure-limit)")
	// ErrTooManyConnections: the API already holds --max-connections
	// connections; the new one is answered 503 and closed.
	ErrTooManyConnections = errors.New("sidecar: too many connections to the API (--max-connections)")
	ErrConfig             = errors.New("sidecar: invalid configuration")
)

// Cluster mode (docs/CLUSTER.md).
var (
	// ErrNotOwner: another node holds the session's lease. A node's peer
	// listener answers it 409 not_owner, and the forwarding node asks Redis
	// again; on --listen a request whose session moved while this node
	// logged the user in is routed again once (routeAgain), and only one
	// whose session moves again answers it.
	ErrNotOwner = errors.New("sidecar: another node of the cluster owns this session")
	// ErrClusterRedis: the cluster's Redis (--cluster-redis) did not
	// answer, so the owner of a session this node does not hold is unknown.
	ErrClusterRedis = errors.New("sidecar: cluster Redis unavailable")
	// ErrPeerUnavailable: the owner node did not answer a forwarded call.
	ErrPeerUnavailable = errors.New("sidecar: the session's owner node is unavailable")
	// ErrPeerUnauthorized: a call on the peer listener without the
	// cluster's secret.
	ErrPeerUnauthorized = errors.New("sidecar: missing or wrong cluster secret")
)

// ErrTooManyPolls: the session already has --max-polls-per-session
// GET /v1/events in flight; the one over is answered 429.
var ErrTooManyPolls = errors.New("sidecar: too many polls in flight for this session (--max-polls-per-session)")

// errClientClosed marks the error of a call whose client hung up before
// the answer (writeError wraps it, knowing the request): a load
// balancer's timeout, a page left. Nobody reads the answer, and nothing
// failed here.
var errClientClosed = errors.New("sidecar: the client hung up before the answer")

// statusClientClosed is the status counted for errClientClosed: no
// answer reaches the client, and nginx's 499 says so in the metrics
// without counting it among the server's errors (5xx).
const statusClientClosed = 499

// statusFor is the one place errors become HTTP statuses and API codes.
// Anything unknown is a 500 "internal", whose detail stays in the log.
func statusFor(err error) (int, string) {
	switch {
	case errors.Is(err, errClientClosed):
		return statusClientClosed, "client_closed"
	case errors.Is(err, ErrBadRequest), errors.Is(err, xmppconn.ErrInvalidArgument), errors.Is(err, xmppconn.ErrInvalidJID):
		return http.StatusBadRequest, "bad_request"
	case errors.Is(err, ErrSessionMissing):
		return http.StatusUnauthorized, "session_missing"
	case errors.Is(err, ErrUnauthorized), errors.Is(err, phpsession.ErrInvalidID),
		errors.Is(err, phpsession.ErrMalformed), errors.Is(err, phpsession.ErrTooLarge):
		return http.StatusUnauthorized, "session_invalid"
	case errors.Is(err, phpsession.ErrNotFound):
		return http.StatusUnauthorized, "session_not_found"
	case errors.Is(err, phpsession.ErrExpired):
		return http.StatusUnauthorized, "session_expired"
	case errors.Is(err, phpsession.ErrNotLoggedIn):
		return http.StatusUnauthorized, "not_logged_in"
	case errors.Is(err, phpsession.ErrPasswordUnavailable):
		// Not the session's fault nor the Jabber server's: the site keeps
		// the password only encrypted. Never an XMPP attempt, never an
		// authentication failure.
		return http.StatusForbidden, "password_unavailable"
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound, "not_found"
	case errors.Is(err, xmppconn.ErrNickInUse):
		return http.StatusConflict, "nick_in_use"
	case errors.Is(err, xmppconn.ErrRoomPassword):
		return http.StatusForbidden, "room_password_required"
	case errors.Is(err, xmppconn.ErrRoomBanned):
		return http.StatusForbidden, "room_banned"
	case errors.Is(err, xmppconn.ErrRoomMembersOnly):
		return http.StatusForbidden, "room_members_only"
	case errors.Is(err, xmppconn.ErrRoomCreation):
		return http.StatusForbidden, "room_creation_forbidden"
	case errors.Is(err, xmppconn.ErrRoomFull):
		return http.StatusConflict, "room_full"
	case errors.Is(err, xmppconn.ErrNotInRoom):
		return http.StatusConflict, "not_in_room"
	case errors.Is(err, xmppconn.ErrNoMUCService):
		return http.StatusNotFound, "no_muc_service"
	case errors.Is(err, ErrNotConnected), errors.Is(err, xmppconn.ErrNotConnected), errors.Is(err, xmppconn.ErrClosed):
		return http.StatusConflict, "not_connected"
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge, "too_large"
	case errors.Is(err, ErrNotOwner):
		return http.StatusConflict, "not_owner"
	case errors.Is(err, ErrPeerUnauthorized):
		return http.StatusUnauthorized, "peer_unauthorized"
	case errors.Is(err, ErrClusterRedis), errors.Is(err, ErrPeerUnavailable):
		return http.StatusServiceUnavailable, "cluster_unavailable"
	case errors.Is(err, ErrForbiddenOrigin):
		return http.StatusForbidden, "origin_forbidden"
	case errors.Is(err, ErrTooManyStreams):
		return http.StatusTooManyRequests, "too_many_streams"
	case errors.Is(err, xmppconn.ErrSendTooLarge):
		return http.StatusRequestEntityTooLarge, "message_too_large"
	case errors.Is(err, ErrRateLimited):
		return http.StatusTooManyRequests, "rate_limited"
	case errors.Is(err, ErrTooManyPolls):
		return http.StatusTooManyRequests, "too_many_polls"
	case errors.Is(err, xmppconn.ErrUnsupported):
		return http.StatusNotImplemented, "feature_unavailable"
	case errors.Is(err, xmppconn.ErrAuth):
		return http.StatusBadGateway, "xmpp_auth_failed"
	case errors.Is(err, errXMPP), errors.Is(err, xmppconn.ErrTLSRequired), errors.Is(err, xmppconn.ErrTimeout),
		errors.Is(err, xmppconn.ErrProtocol), errors.Is(err, xmppconn.ErrStanzaTooLarge):
		return http.StatusBadGateway, "xmpp_unavailable"
	case errors.Is(err, phpsession.ErrUnavailable):
		return http.StatusServiceUnavailable, "store_unavailable"
	case errors.Is(err, ErrShuttingDown):
		return http.StatusServiceUnavailable, "shutting_down"
	case errors.Is(err, ErrAuthThrottled):
		return http.StatusServiceUnavailable, "auth_throttled"
	case errors.Is(err, ErrTooManyConnections):
		return http.StatusServiceUnavailable, "too_many_connections"
	case errors.Is(err, xmppconn.ErrItemNotFound):
		return http.StatusNotFound, "not_found"
	}
	var se *xmppconn.StreamError
	if errors.As(err, &se) {
		return http.StatusBadGateway, "xmpp_unavailable"
	}
	if errors.Is(err, &xmppconn.StanzaError{}) { // any other refusal by the server
		return http.StatusBadGateway, "xmpp_unavailable"
	}
	return http.StatusInternalServerError, "internal"
}

// errXMPP wraps failures to reach the XMPP server (dial, TLS, network).
var errXMPP = errors.New("sidecar: XMPP server unavailable")
