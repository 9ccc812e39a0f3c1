package phpsession

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"time"
)

// Record is what a store returns: the raw session bytes and how to tell
// whether they changed. Stores never decode.
type Record struct {
	Data    []byte
	ModTime time.Time     // files: mtime; redis: zero
	TTL     time.Duration // redis: remaining TTL; files: 0
	Version string        // changes whenever the stored session changes
	// Unlocked (files) marks bytes read while PHP held the file's lock:
	// consistent by every check the store can make, but possibly a write
	// in progress, so only a successful decode of them is believed.
	Unlocked bool
}

// Config configures a Reader.
type Config struct {
	// Store is PHP's session.save_handler: one of StoreNames() ("" = files).
	Store string
	// SavePath is PHP's session.save_path for that handler: a directory
	// ("N;/dir" allowed) for files; phpredis hosts, a rediscluster
	// seed[]=… string or a redis:// URL for redis; "host:port,…" for
	// memcached; "tcp://host:port?weight=…,…" for memcache.
	SavePath string
	// KeyPrefix is the memcache stores' key prefix: memcached.sess_prefix
	// for memcached ("" = memc.sess.key.), memcache.session_prefix_static_key
	// for memcache ("" = none). Redis takes its prefix from the save path.
	KeyPrefix string
	// Hash is how the memcache stores' PHP settings spread sessions over
	// several servers ("" = the extensions' defaults). memcached: ketama,
	// ketama_weighted (memcached.sess_consistent_hash_type) or modula
	// (memcached.sess_consistent_hash=Off). memcache: memcache.hash_strategy
	// consistent or standard and/or memcache.hash_function crc32 or fnv,
	// comma-separated, e.g. "standard,fnv".
	Hash        string
	Serializer  Serializer    // session.serialize_handler
	MaxLifetime time.Duration // session.gc_maxlifetime (files); 0 = 1440 s
	Charset     string        // session charset; "" = UTF-8
	Profile     Profile
	MinIDLength int    // 0 = DefaultMinIDLength
	Owner       int    // expected file owner uid; -1 = this process's uid
	Limits      Limits // zero = DefaultLimits
	CacheSize   int    // sessions kept decoded; 0 = 10000
	LockWait    time.Duration
	Now         func() time.Time
	// IdentityOnly makes Lookup leave Session.Vars nil, so the cache holds
	// identities only. Vars alias the raw session bytes, so a daemon that
	// keeps thousands of sessions and needs only who they name (the
	// sidecar) would otherwise keep every whole session alive: tens of KB
	// each for Expresso's.
	IdentityOnly bool
}

// versioner is implemented by stores that can tell a version without a read.
type versioner interface {
	Stat(ctx context.Context, id string) (string, error)
}

// Reader finds, decodes and identifies PHP sessions, with a cache that is
// never stale: for files an unchanged session costs one open and fstat; for
// Redis one GET, and no decode when the bytes are unchanged.
type Reader struct {
	cfg   Config
	store Store
	cs    Charset
	now   func() time.Time

	mu    sync.RWMutex
	cache map[[sha256.Size]byte]cached // by sha256 of the id
}

type cached struct {
	version string
	sess    *Session
	err     error // a decode or identity error is cached too
	// active is the profile's last-activity time (Expresso's
	// session_dla), zero if the session has none: the profile's
	// inactivity rule is applied to it at every lookup.
	active time.Time
}

// Open validates cfg and opens the store.
func Open(ctx context.Context, cfg Config) (*Reader, error) {
	if _, err := ParseSerializer(string(cfg.Serializer)); err != nil {
		return nil, err
	}
	cs, err := ParseCharset(cfg.Charset)
	if err != nil {
		return nil, err
	}
	if cfg.MaxLifetime <= 0 {
		cfg.MaxLifetime = 1440 * time.Second
	}
	if cfg.MinIDLength <= 0 {
		cfg.MinIDLength = DefaultMinIDLength
	}
	if cfg.LockWait <= 0 {
		cfg.LockWait = 250 * time.Millisecond
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 10000
	}
	if cfg.Limits == (Limits{}) {
		cfg.Limits = DefaultLimits
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	r := &Reader{cfg: cfg, cs: cs, now: now, cache: map[[sha256.Size]byte]cached{}}
	st, err := NewStore(cfg)
	if err != nil {
		return nil, err
	}
	r.store = st
	return r, nil
}

// Ready reports whether the store can be read.
func (r *Reader) Ready(ctx context.Context) error { return r.store.Ready(ctx) }

// Close releases the store's connections.
func (r *Reader) Close() error { return r.store.Close() }

// HashedID is a session id with its SHA-256, computed once (Hash). The
// Reader's cache is keyed by the hash; a caller that keys its own state
// per session by it too (the sidecar's registry) hashes each request's id
// once instead of twice. Its fields are unexported, so the hash always
// belongs to the id.
type HashedID struct {
	id  string
	sum [sha256.Size]byte
}

// Hash returns id with its SHA-256.
func Hash(id string) HashedID { return HashedID{id: id, sum: sha256.Sum256([]byte(id))} }

// ID returns the session id itself (never to be logged).
func (h HashedID) ID() string { return h.id }

// Sum returns the SHA-256 of the id.
func (h HashedID) Sum() [sha256.Size]byte { return h.sum }

// Lookup returns the logged-in session named by id. Errors wrap exactly one
// of ErrInvalidID, ErrNotFound, ErrExpired, ErrNotLoggedIn, ErrMalformed,
// ErrTooLarge or ErrUnavailable. A verdict against the user (anything but
// ErrUnavailable) always comes from a read no PHP write overlapped.
func (r *Reader) Lookup(ctx context.Context, id string) (*Session, error) {
	if err := ValidateID(id, r.cfg.MinIDLength); err != nil {
		return nil, err
	}
	return r.lookup(ctx, Hash(id))
}

// LookupHashed is Lookup for an id the caller has hashed already.
func (r *Reader) LookupHashed(ctx context.Context, h HashedID) (*Session, error) {
	if err := ValidateID(h.id, r.cfg.MinIDLength); err != nil {
		return nil, err
	}
	return r.lookup(ctx, h)
}

func (r *Reader) lookup(ctx context.Context, h HashedID) (*Session, error) {
	id, key := h.id, h.sum
	now := r.now()
	if v, ok := r.store.(versioner); ok {
		ver, err := v.Stat(ctx, id)
		if err != nil {
			r.forget(key)
			return nil, err
		}
		if c, ok := r.get(key); ok && c.version == ver {
			return r.check(c, now)
		}
	}
	deadline := time.Now().Add(r.cfg.LockWait)
	wait := 2 * time.Millisecond
	for {
		rec, err := r.store.Load(ctx, id)
		if err != nil {
			r.forget(key)
			return nil, err
		}
		ver := rec.Version
		if ver == "" {
			sum := sha256.Sum256(rec.Data)
			ver = fmt.Sprintf("%x", sum[:16])
		}
		if c, ok := r.get(key); ok && c.version == ver {
			return r.check(c, now)
		}
		c := cached{version: ver}
		c.sess, c.active, c.err = r.decode(rec, now)
		if c.err == nil || !rec.Unlocked {
			r.put(key, c)
			return r.check(c, now)
		}
		// Read while PHP held the lock and it does not decode to a
		// logged-in user: perhaps PHP's write in progress. Logging the user
		// out on it would be a guess; read again, then fail closed.
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: session did not read whole while PHP held its lock (%v)", ErrUnavailable, c.err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}

func (r *Reader) decode(rec Record, now time.Time) (*Session, time.Time, error) {
	if len(rec.Data) == 0 {
		return nil, time.Time{}, fmt.Errorf("%w: empty session", ErrNotLoggedIn)
	}
	vars, err := Decode(rec.Data, r.cfg.Serializer, r.cfg.Limits)
	if err != nil {
		return nil, time.Time{}, err
	}
	id, err := r.cfg.Profile.Identity(vars, r.cs, now)
	if err != nil {
		return nil, time.Time{}, err
	}
	active := id.LastActivity
	if id.LastActivity.IsZero() {
		id.LastActivity = rec.ModTime
	}
	if r.cfg.IdentityOnly {
		vars = nil
	}
	return &Session{Identity: id, Vars: vars, Version: rec.Version, ModTime: rec.ModTime}, active, nil
}

// check applies the time-dependent rules to a cached result: PHP's GC
// lifetime by mtime, and the profile's inactivity rule.
func (r *Reader) check(c cached, now time.Time) (*Session, error) {
	if c.err != nil {
		return nil, c.err
	}
	s := c.sess
	if err := CheckLifetime(s.ModTime, r.cfg.MaxLifetime, now); err != nil {
		return nil, err
	}
	if err := r.cfg.Profile.CheckActivity(c.active, now); err != nil {
		return nil, err
	}
	return s, nil
}

// CheckLifetime is PHP's garbage-collection rule for stores that keep a
// modification time (files): a session not written for longer than
// session.gc_maxlifetime is expired. A zero modTime (stores whose own
// TTL expires sessions) always passes.
func CheckLifetime(modTime time.Time, maxLifetime time.Duration, now time.Time) error {
	if !modTime.IsZero() && maxLifetime > 0 && now.Sub(modTime) > maxLifetime {
		return fmt.Errorf("%w: not written for %s", ErrExpired, now.Sub(modTime).Round(time.Second))
	}
	return nil
}

func (r *Reader) get(key [sha256.Size]byte) (cached, bool) {
	r.mu.RLock() // every browser request checks its session: readers share
	defer r.mu.RUnlock()
	c, ok := r.cache[key]
	return c, ok
}

func (r *Reader) put(key [sha256.Size]byte, c cached) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= r.cfg.CacheSize {
		// Evict an arbitrary entry: correctness never depends on the cache.
		for k := range r.cache {
			delete(r.cache, k)
			break
		}
	}
	r.cache[key] = c
}

func (r *Reader) forget(key [sha256.Size]byte) {
	r.mu.Lock()
	delete(r.cache, key)
	r.mu.Unlock()
}
