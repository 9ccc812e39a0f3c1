package phpsession

import (
	"bytes"
	"compress/zlib"
	"context"
	"crypto/md5"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/bradfitz/gomemcache/memcache"
)

// MemcachedOptions configure a store for PHP's memcached extension.
type MemcachedOptions struct {
	// Prefix is memcached.sess_prefix ("" = PHP's default memc.sess.key.).
	Prefix string
	// MaxSize is the largest session read (0 = DefaultLimits.MaxBytes).
	MaxSize int
	// Distribution is how PHP's settings spread sessions over servers:
	// "ketama" ("" — memcached.sess_consistent_hash=On,
	// sess_consistent_hash_type=ketama, the defaults), "ketama_weighted"
	// (sess_consistent_hash_type=ketama_weighted) or "modula"
	// (sess_consistent_hash=Off).
	Distribution string
}

// MemcacheOptions configure a store for PHP's older memcache extension.
type MemcacheOptions struct {
	// Prefix is memcache.session_prefix_static_key ("" = none, the default).
	Prefix string
	// MaxSize is the largest session read, compressed or not
	// (0 = DefaultLimits.MaxBytes).
	MaxSize int
	// Redundancy is memcache.session_redundancy: how many servers PHP
	// writes each session to (0 = 2, the extension's default).
	Redundancy int
	// Strategy is memcache.hash_strategy: "consistent" ("", the default)
	// or "standard".
	Strategy string
	// HashFunction is memcache.hash_function: "crc32" ("", the default)
	// or "fnv".
	HashFunction string
}

// MemcacheStore reads sessions written by PHP's memcached extension
// (session.save_handler = memcached) or by the older memcache extension
// (session.save_handler = memcache) from one or more memcached servers. It
// only ever GETs: it takes no lock and writes nothing. A missing key is
// ErrNotFound; a server that does not answer is ErrUnavailable, never "not
// found". memcached's expiry (PHP sets gc_maxlifetime) is authoritative.
//
// Where PHP puts a session, determined by running both extensions against
// several memcached servers (TestMemcacheKeyPlacement):
//
//   - memcached (php-memcached 3 over libmemcached): key sess_prefix+id,
//     its lock at sess_prefix+"lock."+id. The key hashed is the bare id
//     (libmemcached hashes without its prefix). With the defaults
//     (sess_consistent_hash=On, type ketama) the server is the first point
//     at or after the id's Jenkins one-at-a-time hash on a continuum of 100
//     points per server, each the one-at-a-time hash of "host:port-i"
//     ("host-i" on port 11211), i from 0. ketama_weighted: MD5 instead,
//     each digest of "host:port-i" giving four points, 160 points per
//     server shared out by weight ("host:port:weight"). Off: the id's
//     one-at-a-time hash modulo the number of servers.
//   - memcache (pecl memcache 4 and 8): key prefix+id, its lock at
//     prefix+id+".lock". The session goes to the servers of "key-0",
//     "key-1", … skipping servers already chosen, session_redundancy of
//     them (2), and PHP reads them in that order. The server of a string:
//     with hash_strategy=consistent (the default), 160 points per unit of
//     weight at the hash of "host:port-i", folded into 1024 buckets; with
//     standard, bits 16-30 of its hash modulo the total weight, servers
//     repeated by weight. The hash is CRC-32 (hash_function=crc32, the
//     default) or FNV-1a (fnv). Values above 20000 bytes are
//     zlib-compressed (flag 2).
type MemcacheStore struct {
	handler  string
	servers  []*memcache.Client
	addrs    []string
	prefix   string
	maxSize  int
	pick     func(id string) []int // server indexes, in the order PHP reads them
	compress bool                  // values may carry the memcache extension's compressed flag
}

const memcachedDefaultPort = 11211

// NewMemcachedStore parses php-memcached's session.save_path: servers
// "host:port" (port 11211 if left out; a ":weight" suffix is accepted and,
// as with ketama, ignored) or "/path/to/socket", separated by commas,
// optionally after "PERSISTENT=name ". White space inside the list is
// refused: libmemcached then uses the first server only, which is never
// what a site meant.
func NewMemcachedStore(savePath string, opt MemcachedOptions) (*MemcacheStore, error) {
	spec := strings.TrimSpace(savePath)
	if rest, ok := strings.CutPrefix(spec, "PERSISTENT="); ok {
		_, spec, _ = strings.Cut(rest, " ")
	}
	type server struct {
		host         string
		port, weight int
	}
	var list []server
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if strings.ContainsFunc(part, unicode.IsSpace) {
			return nil, fmt.Errorf("%w: memcached save path %q: separate servers with commas (php-memcached reads only the first of a space-separated list)", ErrConfig, savePath)
		}
		if strings.HasPrefix(part, "/") {
			list = append(list, server{host: part, weight: 1})
			continue
		}
		fields := strings.Split(part, ":")
		if len(fields) > 3 || fields[0] == "" {
			return nil, fmt.Errorf("%w: memcached save path entry %q: want host:port", ErrConfig, part)
		}
		s := server{host: fields[0], port: memcachedDefaultPort, weight: 1}
		if len(fields) >= 2 {
			p, err := strconv.Atoi(fields[1])
			if err != nil || p < 1 || p > 65535 {
				return nil, fmt.Errorf("%w: memcached save path entry %q: bad port", ErrConfig, part)
			}
			s.port = p
		}
		if len(fields) == 3 {
			w, err := strconv.Atoi(fields[2])
			if err != nil || w < 0 {
				return nil, fmt.Errorf("%w: memcached save path entry %q: bad weight", ErrConfig, part)
			}
			s.weight = max(w, 1)
		}
		list = append(list, s)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("%w: empty memcached save path", ErrConfig)
	}
	prefix := opt.Prefix
	if prefix == "" {
		prefix = "memc.sess.key."
	}
	if len(prefix) > 218 {
		return nil, fmt.Errorf("%w: memcached.sess_prefix longer than 218 bytes", ErrConfig)
	}
	st := &MemcacheStore{handler: "memcached", prefix: prefix, maxSize: opt.MaxSize}
	total := 0
	for _, s := range list {
		total += s.weight
	}
	var ring continuum
	for i, s := range list {
		addr := s.host
		if s.port != 0 {
			addr = net.JoinHostPort(s.host, strconv.Itoa(s.port))
		}
		st.addrs = append(st.addrs, addr)
		name := func(p int) string {
			if s.port == memcachedDefaultPort || s.port == 0 {
				return s.host + "-" + strconv.Itoa(p)
			}
			return s.host + ":" + strconv.Itoa(s.port) + "-" + strconv.Itoa(p)
		}
		switch opt.Distribution {
		case "", "ketama":
			for p := range 100 {
				ring = append(ring, point{oneAtATime(name(p)), i})
			}
		case "ketama_weighted":
			pct := float32(s.weight) / float32(total)
			n := int(float32(math.Floor(float64(pct*160/4*float32(len(list)) + 0.0000000001))))
			for p := range n {
				sum := md5.Sum([]byte(name(p)))
				for k := range 4 {
					ring = append(ring, point{binary.LittleEndian.Uint32(sum[4*k:]), i})
				}
			}
		case "modula":
		default:
			return nil, fmt.Errorf("%w: memcached distribution %q (want ketama, ketama_weighted or modula)", ErrConfig, opt.Distribution)
		}
	}
	ring.sort()
	st.pick = func(id string) []int {
		switch {
		case len(st.addrs) == 1:
			return []int{0}
		case opt.Distribution == "modula":
			return []int{int(oneAtATime(id) % uint32(len(st.addrs)))}
		case opt.Distribution == "ketama_weighted":
			sum := md5.Sum([]byte(id))
			return []int{ring.find(binary.LittleEndian.Uint32(sum[:4]))}
		}
		return []int{ring.find(oneAtATime(id))}
	}
	return st.connect()
}

// NewMemcacheStore parses pecl memcache's session.save_path:
// "tcp://host:port?persistent=1&weight=1&timeout=1&retry_interval=15"
// entries (or "unix:///path/to/socket"), separated by commas or spaces;
// a bare "host:port" is read as tcp.
func NewMemcacheStore(savePath string, opt MemcacheOptions) (*MemcacheStore, error) {
	st := &MemcacheStore{handler: "memcache", prefix: opt.Prefix, maxSize: opt.MaxSize, compress: true}
	if len(st.prefix) > 250 {
		return nil, fmt.Errorf("%w: memcache session prefix longer than 250 bytes", ErrConfig)
	}
	if strings.Contains(st.prefix, ".") {
		// PHP refuses it at startup and stores bare ids.
		return nil, fmt.Errorf("%w: memcache.session_prefix_static_key %q: PHP ignores a prefix with a dot", ErrConfig, st.prefix)
	}
	var hash func(string) uint32
	switch opt.HashFunction {
	case "", "crc32":
		hash = func(s string) uint32 { return crc32.ChecksumIEEE([]byte(s)) }
	case "fnv":
		hash = fnv1a
	default:
		return nil, fmt.Errorf("%w: memcache hash function %q (want crc32 or fnv)", ErrConfig, opt.HashFunction)
	}
	if opt.Strategy != "" && opt.Strategy != "consistent" && opt.Strategy != "standard" {
		return nil, fmt.Errorf("%w: memcache hash strategy %q (want consistent or standard)", ErrConfig, opt.Strategy)
	}
	var ring continuum
	var standard []int // hash_strategy=standard: server indexes, each repeated by weight
	for _, part := range strings.FieldsFunc(savePath, func(r rune) bool { return r == ',' || unicode.IsSpace(r) }) {
		if !strings.Contains(part, "://") {
			part = "tcp://" + part
		}
		u, err := url.Parse(part)
		if err != nil {
			return nil, fmt.Errorf("%w: memcache save path entry %q: %w", ErrConfig, part, err)
		}
		weight := 1
		if w := u.Query().Get("weight"); w != "" {
			if weight, err = strconv.Atoi(w); err != nil || weight <= 0 {
				return nil, fmt.Errorf("%w: memcache save path entry %q: weight must be positive", ErrConfig, part)
			}
		}
		if t := u.Query().Get("timeout"); t != "" {
			if f, err := strconv.ParseFloat(t, 64); err != nil || f <= 0 {
				return nil, fmt.Errorf("%w: memcache save path entry %q: timeout must be positive", ErrConfig, part)
			}
		}
		var addr, name string
		switch u.Scheme {
		case "tcp":
			port := memcachedDefaultPort
			if p := u.Port(); p != "" {
				if port, err = strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
					return nil, fmt.Errorf("%w: memcache save path entry %q: bad port", ErrConfig, part)
				}
			}
			if u.Hostname() == "" {
				return nil, fmt.Errorf("%w: memcache save path entry %q: no host", ErrConfig, part)
			}
			addr = net.JoinHostPort(u.Hostname(), strconv.Itoa(port))
			name = u.Hostname() + ":" + strconv.Itoa(port)
		case "unix":
			if u.Path == "" {
				return nil, fmt.Errorf("%w: memcache save path entry %q: no socket path", ErrConfig, part)
			}
			addr, name = u.Path, "unix://"+u.Path+":0"
		default:
			return nil, fmt.Errorf("%w: memcache save path entry %q: scheme must be tcp or unix", ErrConfig, part)
		}
		i := len(st.addrs)
		st.addrs = append(st.addrs, addr)
		for p := range weight * 160 {
			ring = append(ring, point{hash(name + "-" + strconv.Itoa(p)), i})
		}
		for range weight {
			standard = append(standard, i)
		}
	}
	if len(st.addrs) == 0 {
		return nil, fmt.Errorf("%w: empty memcache save path", ErrConfig)
	}
	ring.sort()
	var buckets [1024]int
	step := uint32(0xffffffff) / uint32(len(buckets))
	for i := range buckets {
		buckets[i] = ring.find(step * uint32(i))
	}
	server := func(key string) int { return buckets[hash(key)%uint32(len(buckets))] }
	if opt.Strategy == "standard" {
		server = func(key string) int { return standard[((hash(key)>>16)&0x7fff)%uint32(len(standard))] }
	}
	redundancy := opt.Redundancy
	if redundancy <= 0 {
		redundancy = 2
	}
	redundancy = min(redundancy, len(st.addrs))
	const maxFailoverAttempts = 20 // memcache.max_failover_attempts
	st.pick = func(id string) []int {
		if len(st.addrs) == 1 {
			return []int{0}
		}
		key := st.prefix + id
		var order []int
		for n := 0; len(order) < redundancy && n < maxFailoverAttempts; n++ {
			s := server(key + "-" + strconv.Itoa(n))
			if !slices.Contains(order, s) {
				order = append(order, s)
			}
		}
		return order
	}
	return st.connect()
}

func (s *MemcacheStore) connect() (*MemcacheStore, error) {
	if s.maxSize <= 0 {
		s.maxSize = DefaultLimits.MaxBytes
	}
	for _, a := range s.addrs {
		c := memcache.New(a)
		c.Timeout = 2 * time.Second
		c.MaxIdleConns = 16
		s.servers = append(s.servers, c)
	}
	return s, nil
}

// Servers returns, for id, the servers PHP reads its session from, in
// order (tests and `session show` diagnostics).
func (s *MemcacheStore) Servers(id string) []string {
	var out []string
	for _, i := range s.pick(id) {
		out = append(out, s.addrs[i])
	}
	return out
}

// Key is the memcached key of the session id.
func (s *MemcacheStore) Key(id string) string { return s.prefix + id }

// Load GETs the session from the servers PHP would read it from.
func (s *MemcacheStore) Load(ctx context.Context, id string) (Record, error) {
	if err := ValidateID(id, 1); err != nil {
		return Record{}, err
	}
	key := s.Key(id)
	if len(key) > 250 {
		return Record{}, fmt.Errorf("%w: memcached key longer than 250 bytes", ErrInvalidID)
	}
	var failed []error
	for _, i := range s.pick(id) {
		if err := ctx.Err(); err != nil {
			return Record{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		it, err := s.servers[i].Get(key)
		switch {
		case errors.Is(err, memcache.ErrCacheMiss):
			continue
		case err != nil:
			failed = append(failed, fmt.Errorf("%s: %w", s.addrs[i], err))
			continue
		}
		data, err := s.value(it)
		if err != nil {
			return Record{}, err
		}
		return Record{Data: data}, nil
	}
	if len(failed) > 0 {
		// A server that holds a copy did not answer: "not found" would be
		// a guess.
		return Record{}, fmt.Errorf("%w: %s: %w", ErrUnavailable, s.handler, errors.Join(failed...))
	}
	return Record{}, ErrNotFound
}

// value undoes the memcache extension's compression; any other flag is a
// value PHP's session handlers never write.
func (s *MemcacheStore) value(it *memcache.Item) ([]byte, error) {
	if len(it.Value) > s.maxSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(it.Value))
	}
	const compressed = 2 // MMC_COMPRESSED
	switch {
	case it.Flags == 0:
		return it.Value, nil
	case s.compress && it.Flags == compressed:
		zr, err := zlib.NewReader(bytes.NewReader(it.Value))
		if err != nil {
			return nil, fmt.Errorf("%w: compressed session: %w", ErrMalformed, err)
		}
		defer zr.Close()
		data, err := io.ReadAll(io.LimitReader(zr, int64(s.maxSize)+1))
		if err != nil {
			return nil, fmt.Errorf("%w: compressed session: %w", ErrMalformed, err)
		}
		if len(data) > s.maxSize {
			return nil, fmt.Errorf("%w: session inflates past %d bytes", ErrTooLarge, s.maxSize)
		}
		return data, nil
	}
	return nil, fmt.Errorf("%w: memcached item flags %#x are not a session PHP's %s handler writes", ErrMalformed, it.Flags, s.handler)
}

// Ready asks every server for its version.
func (s *MemcacheStore) Ready(ctx context.Context) error {
	for i, c := range s.servers {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		if err := c.Ping(); err != nil {
			return fmt.Errorf("%w: %s %s: %w", ErrUnavailable, s.handler, s.addrs[i], err)
		}
	}
	return nil
}

// Close closes the idle connections.
func (s *MemcacheStore) Close() error {
	var errs []error
	for _, c := range s.servers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// continuum is a hash ring: points sorted by value, each naming a server.
type continuum []point

type point struct {
	value  uint32
	server int
}

func (c continuum) sort() {
	slices.SortStableFunc(c, func(a, b point) int {
		switch {
		case a.value < b.value:
			return -1
		case a.value > b.value:
			return 1
		}
		return 0
	})
}

// find is the server of the first point at or after h, wrapping around.
func (c continuum) find(h uint32) int {
	i, _ := slices.BinarySearchFunc(c, h, func(p point, h uint32) int {
		switch {
		case p.value < h:
			return -1
		case p.value > h:
			return 1
		}
		return 0
	})
	if i == len(c) {
		i = 0
	}
	return c[i].server
}

// fnv1a is 32-bit FNV-1a, pecl memcache's "fnv".
func fnv1a(s string) uint32 {
	h := uint32(0x811c9dc5)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 0x01000193
	}
	return h
}

// oneAtATime is Bob Jenkins's one-at-a-time hash, libmemcached's default.
func oneAtATime(s string) uint32 {
	var h uint32
	for i := 0; i < len(s); i++ {
		h += uint32(s[i])
		h += h << 10
		h ^= h >> 6
	}
	h += h << 3
	h ^= h >> 11
	h += h << 15
	return h
}
