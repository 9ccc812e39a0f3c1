package phpsession

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package wraps exactly one of
// them, so callers (the sidecar's HTTP layer) can tell the reasons apart with
// errors.Is and never by matching strings.
var (
	// ErrInvalidID: the session id is empty, too short, too long or contains
	// a byte outside PHP's session id alphabet [A-Za-z0-9,-]. It is checked
	// before any path or key is built from the id.
	ErrInvalidID = errors.New("phpsession: invalid session id")

	// ErrNotFound: no session with this id exists in the store (or the file
	// is not one we may read: symlink, foreign owner, not regular).
	ErrNotFound = errors.New("phpsession: session not found")

	// ErrExpired: the session exists but PHP's garbage collector would
	// consider it expired (files: now-mtime > gc_maxlifetime), or the
	// Expresso profile's inactivity limit has passed.
	ErrExpired = errors.New("phpsession: session expired")

	// ErrNotLoggedIn: the session decodes but carries no logged-in user
	// (empty session, missing login marker, missing user or password).
	ErrNotLoggedIn = errors.New("phpsession: not logged in")

	// ErrMalformed: the stored bytes are not a valid session for the
	// configured serializer. A *SyntaxError carrying the offset wraps it.
	ErrMalformed = errors.New("phpsession: malformed session data")

	// ErrTooLarge: the session exceeds the configured size or depth limit.
	ErrTooLarge = errors.New("phpsession: session too large")

	// ErrUnavailable: the store could not be read (Redis down, I/O error,
	// or PHP kept the file locked and changing beyond the read budget).
	// It never means "not logged in".
	ErrUnavailable = errors.New("phpsession: session store unavailable")

	// ErrPasswordUnavailable: the session names a logged-in user but keeps
	// the password only in a form this package must not use (Expresso's
	// mcrypt-encrypted app session). A *PasswordUnavailableError wraps it.
	// Nothing should try the user's XMPP login on it.
	ErrPasswordUnavailable = errors.New("phpsession: password unavailable")

	// ErrConfig: a store or reader option is invalid.
	ErrConfig = errors.New("phpsession: invalid configuration")
)

// SyntaxError reports where decoding failed. It wraps ErrMalformed.
type SyntaxError struct {
	Offset int    // byte offset into the session data
	Msg    string // what was expected or found
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("phpsession: malformed session data at byte %d: %s", e.Offset, e.Msg)
}

// Unwrap makes errors.Is(err, ErrMalformed) true.
func (e *SyntaxError) Unwrap() error { return ErrMalformed }

// PasswordUnavailableError says which session key held the password, why
// it cannot be used and which key to have the application fill instead.
// It wraps ErrPasswordUnavailable and never carries the stored value.
type PasswordUnavailableError struct {
	User   string // the login the session names (may be empty)
	Key    string // dotted session key that held the unusable password
	Reason string
	Enable string // session key(s) to have the application set instead
}

func (e *PasswordUnavailableError) Error() string {
	return fmt.Sprintf("phpsession: password unavailable: %s: %s; have Expresso set %s", e.Key, e.Reason, e.Enable)
}

// Unwrap makes errors.Is(err, ErrPasswordUnavailable) true.
func (e *PasswordUnavailableError) Unwrap() error { return ErrPasswordUnavailable }
