// Package sidecar is the imsidecar daemon: it keeps one XMPP client stream
// per logged-in PHP session and gives the PHP code a loopback HTTP API
// (docs/API.md) to use it.
//
// A request names its PHP session (X-Session-Id, or the session cookie for
// the read-only browser routes); the session is read straight from PHP's
// store with phpsession, so a call is exactly as authenticated as the PHP
// session it names. Incoming stanzas become events in a bounded per-session
// log with a monotonic cursor, so a PHP request that dies mid-response
// loses nothing. A janitor re-reads every connected session and takes the
// user offline when the PHP session ends. Operators get /healthz, /readyz,
// /metrics and /status on a separate listener.
//
// Run is the whole program; cmd/imsidecar only calls it.
package sidecar
