package phpsession

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/redis/go-redis/v9"
)

// RedisOptions configure a RedisStore beyond its save path.
type RedisOptions struct {
	// Cluster reads keys with phpredis's cluster prefix
	// "PHPREDIS_CLUSTER_SESSION:" from a Redis Cluster.
	Cluster bool
}

// RedisStore reads sessions written by phpredis's session handler. The
// key's TTL is authoritative for expiry: a missing key is ErrNotFound, and
// every Redis failure is ErrUnavailable, never "not logged in".
//
// A lookup's context deadline bounds it, retries and socket reads
// included (go-redis's ContextTimeoutEnabled): without it go-redis waits
// out its read timeout (2 s, or the save path's read_timeout) whatever the
// deadline, and retries, so that a lookup on a stalled Redis (a master
// restarting or loading, a partition dropping packets) took 4 s, on a
// stalled Redis Cluster 8 s. Only a deadline counts, not a cancellation;
// one that fires mid-reply closes that connection, as the read timeout
// does.
type RedisStore struct {
	hosts  []redisHost
	total  int
	closer []func() error
}

type redisHost struct {
	client redis.Cmdable
	prefix string
	weight int
}

// NewRedisStore accepts the operator's own session.save_path string, as
// phpredis reads it:
//
//   - session.save_handler=redis: one or more hosts separated by commas or
//     spaces ("tcp://h:6379?auth=x&database=2&prefix=P&timeout=2&weight=1,
//     tcp://h2:6379?weight=2", "unix:///run/redis.sock?database=1"), or a
//     redis:// / rediss:// URL. With several hosts, a session lives on the
//     host phpredis picks: the first four bytes of the id read as a
//     little-endian uint32, modulo the total weight, walking the hosts from
//     the last one;
//   - session.save_handler=rediscluster: the query-string form
//     "seed[]=h1:7000&seed[]=h2:7001&auth=…&prefix=…&timeout=…&read_timeout=…",
//     read from the Redis Cluster with the PHPREDIS_CLUSTER_SESSION: prefix.
//
// opt.Cluster reads a host-style save path from a Redis Cluster instead.
func NewRedisStore(saveSpec string, opt RedisOptions) (*RedisStore, error) {
	if isClusterSpec(saveSpec) {
		return newClusterStore(saveSpec)
	}
	s := &RedisStore{}
	// phpredis ends each host's URL at a comma or white space.
	parts := strings.FieldsFunc(saveSpec, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
	for _, part := range parts {
		h, closeFn, err := parseRedisHost(part, opt)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.hosts = append(s.hosts, h)
		s.closer = append(s.closer, closeFn)
		s.total += h.weight
	}
	if len(s.hosts) == 0 {
		return nil, fmt.Errorf("%w: empty redis save path", ErrConfig)
	}
	return s, nil
}

// isClusterSpec recognises phpredis's rediscluster save_path: a query
// string with seed[] entries and no URL scheme.
func isClusterSpec(spec string) bool {
	spec = strings.TrimSpace(spec)
	return !strings.Contains(spec, "://") && (strings.HasPrefix(spec, "seed[") || strings.Contains(spec, "&seed["))
}

// newClusterStore parses the rediscluster save_path the way phpredis's
// PS_OPEN_FUNC(rediscluster) does (PHP's query-string parsing; seed[] is
// required; auth is a password, or auth[]=user&auth[]=pass).
func newClusterStore(spec string) (*RedisStore, error) {
	q, err := url.ParseQuery(strings.TrimSpace(spec))
	if err != nil {
		return nil, fmt.Errorf("%w: rediscluster save path: %w", ErrConfig, err)
	}
	o := &redis.ClusterOptions{DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		PoolSize: 16, MaxRetries: 1, NewClient: dialOnce, ContextTimeoutEnabled: true}
	var auth []string
	for k, vs := range q {
		name, _, indexed := strings.Cut(k, "[")
		switch {
		case name == "seed" && indexed:
			for _, v := range vs {
				if v = strings.TrimSpace(v); v != "" {
					o.Addrs = append(o.Addrs, v)
				}
			}
		case name == "auth" && indexed:
			auth = append(auth, vs...)
		}
	}
	slices.Sort(o.Addrs) // map order; any seed maps the whole cluster
	if len(o.Addrs) == 0 {
		return nil, fmt.Errorf("%w: rediscluster save path has no seed[]", ErrConfig)
	}
	for _, a := range o.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("%w: rediscluster seed %q: want host:port", ErrConfig, a)
		}
	}
	switch {
	case q.Has("auth"):
		o.Password = q.Get("auth")
	case len(auth) == 1:
		o.Password = auth[0]
	case len(auth) >= 2:
		o.Username, o.Password = auth[0], auth[1]
	}
	for _, t := range []struct {
		name string
		dst  *time.Duration
	}{{"timeout", &o.DialTimeout}, {"read_timeout", &o.ReadTimeout}} {
		if v := q.Get(t.name); v != "" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 0 {
				return nil, fmt.Errorf("%w: rediscluster %s %q", ErrConfig, t.name, v)
			}
			if f > 0 {
				*t.dst = time.Duration(f * float64(time.Second))
			}
		}
	}
	prefix := "PHPREDIS_CLUSTER_SESSION:"
	if q.Has("prefix") {
		prefix = q.Get("prefix")
	}
	c := redis.NewClusterClient(o)
	return &RedisStore{hosts: []redisHost{{client: c, prefix: prefix, weight: 1}}, total: 1, closer: []func() error{c.Close}}, nil
}

// dialOnce builds a Redis Cluster's client of one node with one dial per
// attempt (DialerRetries 1). go-redis otherwise dials a refused address 5
// times 100 ms apart, with the pool's other dials queued behind, under
// its own and the cluster's retries: a lookup on a Redis that is down
// took seconds, not the moment a refused connection takes, to answer
// ErrUnavailable (a caller with a live stream goes on without it).
func dialOnce(o *redis.Options) *redis.Client {
	o.DialerRetries = 1
	return redis.NewClient(o)
}

func parseRedisHost(spec string, opt RedisOptions) (redisHost, func() error, error) {
	if !strings.Contains(spec, "://") {
		spec = "tcp://" + spec
	}
	u, err := url.Parse(spec)
	if err != nil {
		return redisHost{}, nil, fmt.Errorf("%w: redis save path: %w", ErrConfig, err)
	}
	q := u.Query()
	o := &redis.Options{DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		PoolSize: 16, MaxRetries: 1, DialerRetries: 1, ContextTimeoutEnabled: true}
	switch u.Scheme {
	case "tcp", "redis", "rediss":
		host := u.Host
		if u.Port() == "" {
			host += ":6379"
		}
		o.Addr = host
		if u.Scheme == "redis" || u.Scheme == "rediss" {
			ro, err := redis.ParseURL(spec)
			if err != nil {
				return redisHost{}, nil, fmt.Errorf("%w: redis URL: %w", ErrConfig, err)
			}
			ro.DialTimeout, ro.ReadTimeout, ro.WriteTimeout, ro.MaxRetries, ro.DialerRetries = o.DialTimeout, o.ReadTimeout, o.WriteTimeout, 1, 1
			ro.ContextTimeoutEnabled = true
			o = ro
		}
	case "unix":
		o.Network, o.Addr = "unix", u.Path
	default:
		return redisHost{}, nil, fmt.Errorf("%w: redis save path scheme %q", ErrConfig, u.Scheme)
	}
	if a := q.Get("auth"); a != "" {
		if user, pass, ok := strings.Cut(a, ":"); ok && q.Has("user") {
			o.Username, o.Password = user, pass
		} else {
			o.Password = a
		}
	}
	if u.User != nil && o.Password == "" {
		o.Password, _ = u.User.Password()
	}
	if d := q.Get("database"); d != "" {
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 {
			return redisHost{}, nil, fmt.Errorf("%w: redis database %q", ErrConfig, d)
		}
		o.DB = n
	}
	if t := q.Get("timeout"); t != "" {
		f, err := strconv.ParseFloat(t, 64)
		if err != nil || f <= 0 {
			return redisHost{}, nil, fmt.Errorf("%w: redis timeout %q", ErrConfig, t)
		}
		o.DialTimeout = time.Duration(f * float64(time.Second))
	}
	if t := q.Get("read_timeout"); t != "" {
		if f, err := strconv.ParseFloat(t, 64); err == nil && f > 0 {
			o.ReadTimeout = time.Duration(f * float64(time.Second))
		}
	}
	h := redisHost{prefix: "PHPREDIS_SESSION:", weight: 1}
	if opt.Cluster {
		h.prefix = "PHPREDIS_CLUSTER_SESSION:"
	}
	if q.Has("prefix") {
		h.prefix = q.Get("prefix")
	}
	if w := q.Get("weight"); w != "" {
		n, err := strconv.Atoi(w)
		if err != nil || n < 1 {
			return redisHost{}, nil, fmt.Errorf("%w: redis weight %q", ErrConfig, w)
		}
		h.weight = n
	}
	if opt.Cluster {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{o.Addr}, Username: o.Username, Password: o.Password,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout, MaxRetries: 1, NewClient: dialOnce,
			ContextTimeoutEnabled: true})
		h.client = c
		return h, c.Close, nil
	}
	c := redis.NewClient(o)
	h.client = c
	return h, c.Close, nil
}

// host picks the server for id the way phpredis's redis_pool_get_sock does.
func (s *RedisStore) host(id string) redisHost {
	if len(s.hosts) == 1 {
		return s.hosts[0]
	}
	var b [4]byte
	copy(b[:], id)
	pos := int(binary.LittleEndian.Uint32(b[:]) % uint32(s.total))
	i := 0
	for j := len(s.hosts) - 1; j >= 0; j-- {
		i += s.hosts[j].weight
		if pos < i {
			return s.hosts[j]
		}
	}
	return s.hosts[0]
}

// Load reads PHPREDIS_SESSION:<id> (or the configured prefix) and its TTL.
func (s *RedisStore) Load(ctx context.Context, id string) (Record, error) {
	if err := ValidateID(id, 1); err != nil {
		return Record{}, err
	}
	h := s.host(id)
	key := h.prefix + id
	var get *redis.StringCmd
	var ttl *redis.DurationCmd
	_, err := h.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		get = p.Get(ctx, key)
		ttl = p.PTTL(ctx, key)
		return nil
	})
	if errors.Is(err, redis.Nil) || (err == nil && errors.Is(get.Err(), redis.Nil)) {
		return Record{}, ErrNotFound
	}
	if err != nil {
		return Record{}, fmt.Errorf("%w: redis: %w", ErrUnavailable, err)
	}
	data, err := get.Bytes()
	if err != nil {
		return Record{}, fmt.Errorf("%w: redis: %w", ErrUnavailable, err)
	}
	rec := Record{Data: data}
	if d, err := ttl.Result(); err == nil && d > 0 {
		rec.TTL = d
	}
	return rec, nil
}

// Ready pings every host.
func (s *RedisStore) Ready(ctx context.Context) error {
	for _, h := range s.hosts {
		if err := h.client.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("%w: redis: %w", ErrUnavailable, err)
		}
	}
	return nil
}

// Close closes the connection pools.
func (s *RedisStore) Close() error {
	var errs []error
	for _, c := range s.closer {
		errs = append(errs, c())
	}
	s.closer = nil
	return errors.Join(errs...)
}
