package sidecar

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// session is one PHP session's XMPP stream and event log, with its state,
// its contacts' presences and its rate limit, as the registry
// (registry.go) keeps it.
type session struct {
	key   string // sha256 of the PHP session id, hex; never the id itself
	short string // first 8 hex digits, for logs and the resource
	user  string
	jid   string // bare JID
	cred  [32]byte
	ident phpsession.Identity // as last read, for API calls while the store is down
	log   *eventLog
	// durable writes the log and the stream's state to Redis, behind the
	// lease (clusterstate.go); nil on a single node.
	durable *clusterSession
	start   cursor // the log's head when this stream was opened
	since   time.Time

	lastPoll atomic.Int64 // unix nanos
	state    atomic.Value // xmppconn.State
	reason   atomic.Value // string
	// polls is how many GET /v1/events of this PHP session are in flight
	// (long polls, parked ones until answered, and SSE streams), capped
	// at --max-polls-per-session.
	polls atomic.Int32

	mu      sync.Mutex
	conn    xmppSession
	fullJID string
	// presence is, per bare JID, the available resources sorted by
	// Resource: a contact has one or two, and a slice of them costs a
	// tenth of a map (a map per online contact was ≈ 700 bytes).
	presence map[string][]presenceInfo
	limiter  tokenBucket
	// bridge holds the browser streams attached (bridge.go); nil until
	// the first one.
	bridge *bridge
}

// acquirePoll counts one more poll in flight unless max already are;
// releasePoll gives it back.
func (s *session) acquirePoll(max int) bool {
	if s.polls.Add(1) > int32(max) {
		s.polls.Add(-1)
		return false
	}
	return true
}

func (s *session) releasePoll() { s.polls.Add(-1) }

func (s *session) State() xmppconn.State {
	if v, ok := s.state.Load().(xmppconn.State); ok {
		return v
	}
	return xmppconn.StateConnecting
}

// live reports whether the stream is up or coming back by itself.
func (s *session) live() bool {
	st := s.State()
	return st != xmppconn.StateOffline && st != xmppconn.StateAuthFailed
}

func (s *session) setState(st xmppconn.State, reason string) {
	s.state.Store(st)
	s.reason.Store(reason)
}

func (s *session) trackPresence(p *xmppconn.Presence) {
	bare, res, _ := strings.Cut(p.From, "/")
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.presence[bare]
	i, found := slices.BinarySearchFunc(list, res, func(pi presenceInfo, res string) int { return strings.Compare(pi.Resource, res) })
	if p.Type == "unavailable" {
		if !found {
			return
		}
		if len(list) == 1 {
			delete(s.presence, bare)
			return
		}
		s.presence[bare] = slices.Delete(list, i, i+1)
		return
	}
	pi := presenceInfo{Resource: res, Show: p.Show, Status: p.Status, Priority: p.Priority, Avatar: p.Avatar}
	if found {
		if pi.Avatar == nil {
			// XEP-0153: a presence without the hash leaves it as it was.
			pi.Avatar = list[i].Avatar
		}
		list[i] = pi
		return
	}
	if len(list) == 0 {
		list = make([]presenceInfo, 0, 1) // most contacts have one resource
	}
	s.presence[bare] = slices.Insert(list, i, pi)
}

func (s *session) clearPresence() {
	s.mu.Lock()
	s.presence = map[string][]presenceInfo{}
	s.mu.Unlock()
	if s.durable != nil {
		s.durable.clearPresence()
	}
}

// presenceOf returns a copy of the resources of bare, sorted by Resource.
func (s *session) presenceOf(bare string) []presenceInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(make([]presenceInfo, 0, len(s.presence[bare])), s.presence[bare]...)
}

// stream returns the session's live XMPP stream, or ErrNotConnected.
func (s *session) stream() (xmppSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil || s.State() == xmppconn.StateOffline || s.State() == xmppconn.StateAuthFailed {
		return nil, ErrNotConnected
	}
	return s.conn, nil
}

// takeStream takes the XMPP stream out of s, for the caller to close or let
// go, and ends the browser streams attached to it with reason.
func (s *session) takeStream(reason string) xmppSession {
	s.mu.Lock()
	conn := s.conn
	s.conn = nil
	b := s.bridge
	s.mu.Unlock()
	if b != nil {
		b.close(reason)
	}
	return conn
}
