package phpsession

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Store reads the raw bytes of PHP sessions by id, exactly where one PHP
// save handler puts them. Stores never decode. Load's errors wrap
// ErrInvalidID, ErrNotFound, ErrTooLarge or ErrUnavailable; a missing
// session is ErrNotFound and a store that cannot answer is ErrUnavailable,
// never "not found".
type Store interface {
	Load(ctx context.Context, id string) (Record, error)
	// Ready reports whether the store can be read (ErrUnavailable if not).
	Ready(ctx context.Context) error
	// Close releases connections; the store is not used after it.
	Close() error
}

// storeKinds is the one list of session stores: session.save_handler names
// and how to open each from a Config. Adding a store is a file with its
// opener and one line here.
var storeKinds = map[string]func(Config) (Store, error){
	"files": func(cfg Config) (Store, error) {
		return NewFileStore(cfg.SavePath, FileOptions{Owner: cfg.Owner, MaxSize: int64(cfg.Limits.MaxBytes), LockWait: cfg.LockWait})
	},
	"redis": func(cfg Config) (Store, error) {
		return NewRedisStore(cfg.SavePath, RedisOptions{})
	},
	"memcached": func(cfg Config) (Store, error) {
		return NewMemcachedStore(cfg.SavePath, MemcachedOptions{Prefix: cfg.KeyPrefix, MaxSize: cfg.Limits.MaxBytes, Distribution: cfg.Hash})
	},
	"memcache": func(cfg Config) (Store, error) {
		opt := MemcacheOptions{Prefix: cfg.KeyPrefix, MaxSize: cfg.Limits.MaxBytes}
		for w := range strings.SplitSeq(cfg.Hash, ",") {
			switch w = strings.TrimSpace(w); w {
			case "":
			case "consistent", "standard":
				opt.Strategy = w
			case "crc32", "fnv":
				opt.HashFunction = w
			default:
				return nil, fmt.Errorf("%w: memcache hash %q (want consistent or standard, and crc32 or fnv)", ErrConfig, w)
			}
		}
		return NewMemcacheStore(cfg.SavePath, opt)
	},
}

// StoreNames lists the stores NewStore opens, sorted: the values of
// session.save_handler this package reads.
func StoreNames() []string {
	names := make([]string, 0, len(storeKinds))
	for n := range storeKinds {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// NewStore opens the store cfg.Store names ("" is files) with cfg.SavePath,
// PHP's session.save_path for that handler. It does not connect: a bad
// save path is ErrConfig, an unreachable server shows in Ready and Load.
func NewStore(cfg Config) (Store, error) {
	name := cfg.Store
	if name == "" {
		name = "files"
	}
	open, ok := storeKinds[name]
	if !ok {
		return nil, fmt.Errorf("%w: unknown store %q (want %s)", ErrConfig, cfg.Store, strings.Join(StoreNames(), ", "))
	}
	if cfg.Hash != "" && name != "memcached" && name != "memcache" {
		return nil, fmt.Errorf("%w: only the memcached and memcache stores take a hash setting", ErrConfig)
	}
	if strings.TrimSpace(cfg.SavePath) == "" {
		return nil, fmt.Errorf("%w: the %s store needs a save path", ErrConfig, name)
	}
	if cfg.Limits == (Limits{}) {
		cfg.Limits = DefaultLimits
	}
	return open(cfg)
}
