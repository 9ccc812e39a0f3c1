package phpsession

import (
	"log/slog"
	"time"
)

// Identity is the logged-in user a PHP session names. Password is the user's
// own Jabber password, taken from the session; it must never be logged or
// sent anywhere but to the XMPP server. LogValue redacts it.
type Identity struct {
	User         string    // XMPP localpart, e.g. "alice"
	Password     string    // never logged
	FullName     string    // UTF-8
	Email        string    // UTF-8
	LastActivity time.Time // Expresso's session_dla, or the store's mtime; zero if unknown
}

// LogValue implements slog.LogValuer and never includes the password.
func (i Identity) LogValue() slog.Value {
	return slog.GroupValue(slog.String("user", i.User), slog.Bool("password_present", i.Password != ""))
}

// Session is one decoded, logged-in PHP session.
type Session struct {
	Identity Identity
	// Vars holds the decoded top-level session variables in PHP's order.
	Vars *Array
	// Version changes whenever the stored session changes (content, file
	// replaced, key rewritten). The sidecar compares versions to notice a
	// changed session cheaply.
	Version string
	// ModTime is when the store last saw the session written (file mtime);
	// zero for stores that do not know.
	ModTime time.Time
}
