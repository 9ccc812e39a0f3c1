// Package phpsession reads PHP sessions exactly as PHP writes them, so the
// sidecar can authenticate a request by the PHP session it names.
//
// Storage and decoding are kept apart. Stores return raw bytes: FileStore
// reads PHP's "files" handler (sess_<id> files, opened read-only without
// following symlinks and never blocking on PHP's request lock),
// RedisStore reads phpredis's keys and MemcacheStore the keys of PHP's
// memcached and memcache extensions, on the server each puts them. NewStore
// is the one factory, by session.save_handler name, and
// phpsessiontest.RunStoreTests the suite every store passes. A file read while PHP holds its lock
// may be PHP's truncate-then-write in progress, so the Reader never logs a
// user out on one: it reads again and otherwise fails closed with
// ErrUnavailable. Decode is a
// pure function over those bytes for the "php", "php_serialize" and
// "php_binary" serialize handlers, bounded in size and depth and fuzzed. It
// keeps what PHP 8.2's session_start() keeps and refuses the sessions PHP
// destroys as undecodable, checked against real PHP by a differential test.
// A Profile finds the logged-in user in the decoded variables (Expresso's
// layout, or configured key paths), and a Reader puts the three together
// with a cache that is never stale.
//
// Every error wraps one of the sentinels in errors.go, so callers can tell
// "no such session" from "expired", "not logged in", "malformed" and
// "store unavailable" without matching strings.
package phpsession
