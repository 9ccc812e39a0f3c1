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
	Store       string        // "files" or "redis"
	SavePath    string        // files: PHP's session.save_path
	Redis       string        // redis: phpredis save_path (hosts or rediscluster seed[]=…) or redis:// URL
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

// store is what the Reader needs from a session store.
type store interface {
	Load(ctx context.Context, id string) (Record, error)
	Ready(ctx context.Context) error
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
	store store
	cs    Charset
	now   func() time.Time

	mu    sync.Mutex
	cache map[string]cached // by sha256 of the id
}

type cached struct {
	version string
	sess    *Session
	err     error // a decode or identity error is cached too
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
	r := &Reader{cfg: cfg, cs: cs, now: now, cache: map[string]cached{}}
	switch cfg.Store {
	case "files", "":
		fs, err := NewFileStore(cfg.SavePath, FileOptions{Owner: cfg.Owner, MaxSize: int64(cfg.Limits.MaxBytes), LockWait: cfg.LockWait})
		if err != nil {
			return nil, err
		}
		r.store = fs
	case "redis":
		rs, err := NewRedisStore(cfg.Redis, RedisOptions{})
		if err != nil {
			return nil, err
		}
		r.store = rs
	default:
		return nil, fmt.Errorf("%w: unknown store %q (want files or redis)", ErrConfig, cfg.Store)
	}
	return r, nil
}

// Ready reports whether the store can be read.
func (r *Reader) Ready(ctx context.Context) error { return r.store.Ready(ctx) }

// Close releases the store's connections.
func (r *Reader) Close() error {
	if c, ok := r.store.(interface{ Close() error }); ok {
		return c.Close()
	}
	return nil
}

// Lookup returns the logged-in session named by id. Errors wrap exactly one
// of ErrInvalidID, ErrNotFound, ErrExpired, ErrNotLoggedIn, ErrMalformed,
// ErrTooLarge or ErrUnavailable. A verdict against the user (anything but
// ErrUnavailable) always comes from a read no PHP write overlapped.
func (r *Reader) Lookup(ctx context.Context, id string) (*Session, error) {
	if err := ValidateID(id, r.cfg.MinIDLength); err != nil {
		return nil, err
	}
	key := cacheKey(id)
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
		c.sess, c.err = r.decode(rec, now)
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

func (r *Reader) decode(rec Record, now time.Time) (*Session, error) {
	if len(rec.Data) == 0 {
		return nil, fmt.Errorf("%w: empty session", ErrNotLoggedIn)
	}
	vars, err := Decode(rec.Data, r.cfg.Serializer, r.cfg.Limits)
	if err != nil {
		return nil, err
	}
	id, err := r.cfg.Profile.Identity(vars, r.cs, now)
	if err != nil {
		return nil, err
	}
	if id.LastActivity.IsZero() {
		id.LastActivity = rec.ModTime
	}
	if r.cfg.IdentityOnly {
		vars = nil
	}
	return &Session{Identity: id, Vars: vars, Version: rec.Version, ModTime: rec.ModTime}, nil
}

// check applies the time-dependent rules to a cached result: PHP's GC
// lifetime by mtime, and the profile's inactivity limit.
func (r *Reader) check(c cached, now time.Time) (*Session, error) {
	if c.err != nil {
		return nil, c.err
	}
	s := c.sess
	if !s.ModTime.IsZero() && now.Sub(s.ModTime) > r.cfg.MaxLifetime {
		return nil, fmt.Errorf("%w: not written for %s", ErrExpired, now.Sub(s.ModTime).Round(time.Second))
	}
	if r.cfg.Profile.Name() == "expresso" && !s.Identity.LastActivity.IsZero() &&
		now.Sub(s.Identity.LastActivity) > r.cfg.Profile.sessionTimeout && s.Identity.LastActivity != s.ModTime {
		return nil, fmt.Errorf("%w: inactive since %s", ErrExpired, s.Identity.LastActivity.UTC().Format(time.RFC3339))
	}
	return s, nil
}

func cacheKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return string(sum[:])
}

func (r *Reader) get(key string) (cached, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.cache[key]
	return c, ok
}

func (r *Reader) put(key string, c cached) {
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

func (r *Reader) forget(key string) {
	r.mu.Lock()
	delete(r.cache, key)
	r.mu.Unlock()
}
