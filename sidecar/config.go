package sidecar

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// Config is the whole configuration of the daemon: flags, each with an
// environment twin IMSIDECAR_<NAME> (upper case, dashes as underscores).
// A flag on the command line wins over the environment, which wins over
// the default.
type Config struct {
	Listen       string
	ListenMode   string
	ListenGroup  string
	UnsafeListen bool
	OpsListen    string
	OpsTokenFile string

	XMPPAddr           string
	XMPPDomain         string
	XMPPTLS            string
	XMPPCAFile         string
	XMPPServerName     string
	XMPPResourcePrefix string
	XMPPMUCService     string
	XMPPMaxStanzaSize  int
	XMPPMaxSendSize    int

	APITokenFile    string
	SessionCookie   string
	Inactivity      time.Duration
	EventBuffer     int
	EventBufferMB   int // byte cap of one session's event log, MiB
	EventMemoryMB   int // byte cap of every event log together, MiB; 0: none
	ShutdownTimeout time.Duration
	RecheckInterval time.Duration
	RateLimit       float64
	AuthFailLimit   int
	ConnectLimit    int
	MaxConnections  int
	MaxPolls        int
	GCPercent       int
	HTTP2           bool
	HTTP2MaxStreams int

	// Browser streams (BOSH, WebSocket: bridge.go).
	BOSHURL           string
	AllowedOrigins    string
	MaxBrowserStreams int
	OfflineGrace      time.Duration
	allowedOrigins    []string // AllowedOrigins, parsed by Validate

	SessionStore       string
	SessionSavePath    string
	SessionRedis       string
	SessionKeyPrefix   string
	SessionHash        string
	SessionSerializer  string
	SessionMaxLifetime time.Duration
	SessionCharset     string
	SessionTimeout     time.Duration
	SessionMinIDLength int
	SessionOwner       int
	Profile            string
	GenericUserPath    string
	GenericPassword    string
	GenericFullname    string
	GenericEmail       string

	LogLevel  string
	LogFormat string

	// Cluster mode (docs/CLUSTER.md): on when ClusterRedis is set.
	ClusterRedis      string
	ClusterNodeID     string
	ClusterPeerListen string
	ClusterSecretFile string
	ClusterLeaseTTL   time.Duration

	// fromProfile lists the settings --profile chose because neither the
	// command line nor the environment did ("--flag=value (why)"), for
	// check-config to show.
	fromProfile []string
}

// flagSet declares every flag into c. The same set drives parsing, the
// environment twins, --help and docs/CONFIG.md.
func (c *Config) flagSet(out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("imsidecar", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:8765", "API address: host:port on loopback, or unix:/path for a unix socket")
	fs.StringVar(&c.ListenMode, "listen-mode", "0660", "permissions of the API unix socket (octal)")
	fs.StringVar(&c.ListenGroup, "listen-group", "", "group owning the API unix socket (name or gid; empty keeps the process's)")
	fs.BoolVar(&c.UnsafeListen, "unsafe-listen", false, "allow --listen and --ops-listen on non-loopback addresses")
	fs.StringVar(&c.OpsListen, "ops-listen", "127.0.0.1:8766", "address of /healthz, /readyz, /metrics and /status (empty disables)")
	fs.StringVar(&c.OpsTokenFile, "ops-token-file", "", "file holding a bearer token that opens the per-user rows of /status (the API token does too; without either, /status shows counts only)")
	fs.StringVar(&c.XMPPAddr, "xmpp-addr", "", "Jabber server c2s address host:port (required)")
	fs.StringVar(&c.XMPPDomain, "xmpp-domain", "", "XMPP domain: users are <login>@<domain> (required)")
	fs.StringVar(&c.XMPPTLS, "xmpp-tls", "starttls", "TLS to the Jabber server: starttls, direct (XEP-0368) or none (loopback only)")
	fs.StringVar(&c.XMPPCAFile, "xmpp-ca-file", "", "PEM CA bundle to verify the Jabber server (default: system roots)")
	fs.StringVar(&c.XMPPServerName, "xmpp-server-name", "", "name expected in the server certificate (default: --xmpp-domain)")
	fs.StringVar(&c.XMPPResourcePrefix, "xmpp-resource-prefix", "expresso", "XMPP resource prefix; the resource is <prefix>-<hash of the PHP session>")
	fs.StringVar(&c.XMPPMUCService, "xmpp-muc-service", "", "group chat (XEP-0045) service domain, e.g. conference.example.org (default: discovered from the server)")
	fs.IntVar(&c.XMPPMaxStanzaSize, "xmpp-max-stanza-size", xmppconn.DefaultMaxStanzaSize, "largest stanza (bytes) read from the Jabber server and kept in memory; a larger one is skipped and reported as a \"dropped\" event, the stream stays up (default four times the servers' 256 KiB: they re-escape what they relay, so a stanza may arrive larger than it was sent)")
	fs.IntVar(&c.XMPPMaxSendSize, "xmpp-max-send-size", xmppconn.DefaultMaxSendSize, "largest stanza (bytes, once encoded) sent to the Jabber server; a larger message is refused with 413 message_too_large; keep it below the server's limit (Prosody c2s_stanza_size_limit, ejabberd max_stanza_size)")
	fs.StringVar(&c.APITokenFile, "api-token-file", "", "file holding a bearer token required on every API call, cookie calls included (Apache adds it; optional)")
	fs.StringVar(&c.SessionCookie, "session-cookie", "", "PHP session cookie name (default: sessionid for --profile=expresso, PHPSESSID for generic)")
	fs.DurationVar(&c.Inactivity, "inactivity", 120*time.Second, "close a user's stream after this long without a poll")
	fs.IntVar(&c.EventBuffer, "event-buffer", 1000, "events kept per session for polls to catch up")
	fs.IntVar(&c.EventBufferMB, "event-buffer-mb", 4, "MiB of events kept per session at most; past it the oldest go, unacknowledged ones with recovered:false (1..1024)")
	fs.IntVar(&c.EventMemoryMB, "event-memory-mb", 256, "MiB of events kept by all sessions together at most; past it acknowledged events go first, then the oldest of the largest logs (0: no cap)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "bound on graceful shutdown")
	fs.DurationVar(&c.RecheckInterval, "recheck-interval", 5*time.Second, "how often each connected PHP session is re-read (logout/expiry detection)")
	fs.Float64Var(&c.RateLimit, "rate-limit", 20, "mutating API calls per second allowed per session (bursts of twice that)")
	fs.IntVar(&c.AuthFailLimit, "auth-failure-limit", 10, "XMPP authentication failures the server may see per hour from the whole daemon, first logins and reconnections, below its per-IP ban (ejabberd mod_fail2ban: 20); logins in flight count against it and the others wait their turn; a fifth is kept for passwords that worked before (0: no limit)")
	fs.IntVar(&c.ConnectLimit, "xmpp-connect-limit", 32, "XMPP connection attempts in flight at most, from the whole daemon (logins, reconnections, takeovers, resumptions), each until its stream is secured; the others wait their turn in the daemon instead of in the Jabber server's accept queue (0: no limit)")
	fs.IntVar(&c.MaxConnections, "max-connections", 10000, "open API connections at most; more are answered 503 too_many_connections (keep it below the open files limit minus one per user); an HTTP/2 connection counts once however many requests it carries")
	fs.IntVar(&c.MaxPolls, "max-polls-per-session", 8, "GET /v1/events (long polls, SSE streams) in flight at most per PHP session, a parked poll counting until answered; more are answered 429 too_many_polls and their connection closed, so one session cannot hold every API connection (8: four tabs, each with a poll left over from a reload)")
	fs.BoolVar(&c.HTTP2, "http2", true, "also accept HTTP/2 without TLS (h2c with prior knowledge, RFC 9113 §3.3) on --listen, next to HTTP/1.1: one connection carries many pending polls")
	fs.IntVar(&c.HTTP2MaxStreams, "http2-max-streams", 100, "HTTP/2: requests in flight at most on one connection (pending polls included), so a client needs users/this connections; more costs CPU per frame, as Go's server visits every open stream to pick the next frame")
	fs.StringVar(&c.BOSHURL, "bosh-url", "/http-bind", "the BOSH endpoint's URL as browsers reach it through the site (e.g. /im/http-bind), answered by POST /v1/prebind")
	fs.StringVar(&c.AllowedOrigins, "allowed-origins", "", "browser origins allowed on /http-bind and /xmpp-websocket, comma-separated (e.g. https://mail.example.org); empty: the host the request was sent to (Host or X-Forwarded-Host)")
	fs.IntVar(&c.MaxBrowserStreams, "max-browser-streams", 8, "BOSH and WebSocket streams attached at once per PHP session (tabs)")
	fs.DurationVar(&c.OfflineGrace, "offline-grace", 10*time.Second, "a BOSH terminate carrying an unavailable presence (Expresso 2.5's \"offline\" menu, and its page unload) makes the user unavailable after this long unless a page of the same PHP session attaches first (0: never, the page just detaches; at most 5m)")
	fs.IntVar(&c.GCPercent, "gc-percent", 50, "Go garbage collector target (GOGC): heap growth allowed over live memory before a collection; lower keeps less memory per user for a little CPU (10..1000; a GOGC environment variable wins)")
	fs.StringVar(&c.SessionStore, "session-store", "files", "PHP session store, as session.save_handler: "+strings.Join(phpsession.StoreNames(), ", "))
	fs.StringVar(&c.SessionSavePath, "session-save-path", "", "PHP's session.save_path for the store: files: \"/dir\", \"N;/dir\" or \"N;MODE;/dir\" (default "+phpsession.ExpressoSavePath+" for --profile=expresso, "+genericSavePath+" for generic); memcached: host:port,host:port…; memcache: tcp://host:port?weight=N…,…; redis: as --session-redis")
	fs.StringVar(&c.SessionRedis, "session-redis", "", "redis store: PHP's session.save_path for phpredis: one or more hosts (tcp://host:port?auth=…&database=N&weight=W…, separated by commas or spaces), a rediscluster seed[]=host:port&seed[]=…&auth=… string, or a redis:// URL")
	fs.StringVar(&c.SessionKeyPrefix, "session-key-prefix", "", "memcached store: PHP's memcached.sess_prefix (default memc.sess.key.); memcache store: memcache.session_prefix_static_key (default none)")
	fs.StringVar(&c.SessionHash, "session-hash", "", "how PHP spreads sessions over several memcached servers, if not the extension's default: memcached store: ketama_weighted (memcached.sess_consistent_hash_type) or modula (memcached.sess_consistent_hash=Off); memcache store: standard (memcache.hash_strategy) and/or fnv (memcache.hash_function), comma-separated")
	fs.StringVar(&c.SessionSerializer, "session-serializer", "php", "PHP's session.serialize_handler: php, php_serialize or php_binary")
	fs.DurationVar(&c.SessionMaxLifetime, "session-max-lifetime", 0, "PHP's session.gc_maxlifetime: files untouched for longer are expired (default 4h0m0s, Expresso's, for --profile=expresso; 24m0s, PHP's, for generic)")
	fs.StringVar(&c.SessionCharset, "session-charset", "", "charset of session strings (default: ISO-8859-1 for expresso, UTF-8 for generic)")
	fs.DurationVar(&c.SessionTimeout, "session-timeout", phpsession.ExpressoSessionTimeout, "expresso profile: Expresso's sessions_timeout (session_dla older is expired)")
	fs.IntVar(&c.SessionMinIDLength, "session-min-id-length", phpsession.DefaultMinIDLength, "shortest session id accepted")
	fs.IntVar(&c.SessionOwner, "session-owner", -1, "uid that must own session files (-1: the sidecar's own uid)")
	fs.StringVar(&c.Profile, "profile", "expresso", "where the user is in the session: expresso or generic")
	fs.StringVar(&c.GenericUserPath, "generic-user-path", "", "generic profile: dotted path of the login, e.g. auth.user")
	fs.StringVar(&c.GenericPassword, "generic-password-path", "", "generic profile: dotted path of the password")
	fs.StringVar(&c.GenericFullname, "generic-fullname-path", "", "generic profile: dotted path of the full name (optional)")
	fs.StringVar(&c.GenericEmail, "generic-email-path", "", "generic profile: dotted path of the e-mail (optional)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "text", "text or json")
	fs.StringVar(&c.ClusterRedis, "cluster-redis", "", "cluster mode (docs/CLUSTER.md): the Redis the nodes share, redis://[user:pass@]host:port[/db] (rediss:// with TLS) or redis-cluster://[user:pass@]host:port,host:port… for a Redis Cluster; empty: a single node, as without it")
	fs.StringVar(&c.ClusterNodeID, "cluster-node-id", "", "cluster mode: this node's name, unique in the cluster and kept across restarts (default: the host name)")
	fs.StringVar(&c.ClusterPeerListen, "cluster-peer-listen", "", "cluster mode: host:port where the other nodes reach this one, a loopback or private address (required with --cluster-redis)")
	fs.StringVar(&c.ClusterSecretFile, "cluster-secret-file", "", "cluster mode: file holding the secret every node shares, at least 16 bytes, required on the peer listener (required with --cluster-redis)")
	fs.DurationVar(&c.ClusterLeaseTTL, "cluster-lease-ttl", 5*time.Second, "cluster mode: how long a node's ownership of a session lasts unless renewed (every third of it); a node that stops longer loses its sessions to the others (1s..60s)")
	return fs
}

// Flag describes one setting of the flag set, for documentation that is
// generated from it (docs/CONFIG.md, the man page and /etc/default/imsidecar
// of the Debian package).
type Flag struct {
	Name    string // without dashes, e.g. "xmpp-addr"
	Env     string // the environment twin, e.g. "IMSIDECAR_XMPP_ADDR"
	Type    string // the value's kind as --help names it: "string", "duration", "int", "float"; "" for a boolean
	Default string // as --help prints it; "" when there is none
	Usage   string
}

// Flags lists every setting in name order: the same set that Run parses.
func Flags() []Flag {
	var c Config
	var flags []Flag
	c.flagSet(io.Discard).VisitAll(func(f *flag.Flag) {
		kind, _ := flag.UnquoteUsage(f)
		flags = append(flags, Flag{Name: f.Name, Env: envName(f.Name), Type: kind, Default: f.DefValue, Usage: f.Usage})
	})
	return flags
}

// envName is the environment twin of a flag.
func envName(flagName string) string {
	return "IMSIDECAR_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig parses args, fills unset flags from the environment, applies
// the per-profile defaults and validates everything.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (*Config, []string, error) {
	c := &Config{}
	fs := c.flagSet(out)
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", envName(f.Name), err))
			}
		}
	})
	if len(errs) > 0 {
		return nil, nil, fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
	}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true }) // the environment's too
	c.applyDefaults(set)
	return c, fs.Args(), nil
}

// genericSavePath is Debian's session.save_path, the generic profile's
// default.
const genericSavePath = "/var/lib/php/sessions"

// applyDefaults fills what the profile implies into the flags left unset
// (set names the flags given on the command line or in the environment),
// and notes which for check-config.
func (c *Config) applyDefaults(set map[string]bool) {
	expresso := c.Profile != "generic"
	def := func(name string, dst any, expressoVal, genericVal any, why string) {
		if set[name] {
			return
		}
		v := genericVal
		if expresso {
			v = expressoVal
		}
		switch d := dst.(type) {
		case *string:
			*d = v.(string)
		case *time.Duration:
			*d = v.(time.Duration)
		}
		if expresso && why != "" {
			c.fromProfile = append(c.fromProfile, fmt.Sprintf("--%s=%v (%s)", name, v, why))
		}
	}
	def("session-cookie", &c.SessionCookie, phpsession.ExpressoCookie, "PHPSESSID", "Expresso's session_name")
	def("session-charset", &c.SessionCharset, phpsession.ExpressoCharset, "UTF-8", "Expresso's default_charset")
	def("session-max-lifetime", &c.SessionMaxLifetime, phpsession.ExpressoSessionTimeout, 1440*time.Second,
		"Expresso sets session.gc_maxlifetime to its sessions_timeout")
	if c.SessionStore == "files" {
		def("session-save-path", &c.SessionSavePath, phpsession.ExpressoSavePath, genericSavePath,
			"session.save_path in Expresso's .htaccess; its Debian installer uses /var/lib/php5")
	}
	if expresso && !set["session-timeout"] {
		c.fromProfile = append(c.fromProfile, fmt.Sprintf("--session-timeout=%v (Expresso's sessions_timeout default)", c.SessionTimeout))
	}
	if c.SessionStore == "redis" && c.SessionSavePath == "" {
		c.SessionSavePath = c.SessionRedis
	}
}

// Validate reports every problem at once, each naming its flag.
func (c *Config) Validate() error {
	var errs []error
	bad := func(flagName, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flagName, fmt.Sprintf(format, args...)))
	}
	checkListen := func(name, addr string, allowEmpty bool) {
		if addr == "" {
			if !allowEmpty {
				bad(name, "must not be empty")
			}
			return
		}
		if path, ok := strings.CutPrefix(addr, "unix:"); ok {
			if !strings.HasPrefix(path, "/") {
				bad(name, "unix socket path %q must be absolute", path)
			}
			return
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			bad(name, "%q is not host:port or unix:/path", addr)
			return
		}
		if !c.UnsafeListen && !isLoopback(host) {
			bad(name, "%q is not a loopback address (add --unsafe-listen to allow it)", addr)
		}
	}
	checkListen("listen", c.Listen, false)
	checkListen("ops-listen", c.OpsListen, true)
	if _, err := strconv.ParseUint(c.ListenMode, 8, 32); err != nil {
		bad("listen-mode", "%q is not an octal mode", c.ListenMode)
	}
	if c.XMPPAddr == "" {
		bad("xmpp-addr", "required (host:port of the Jabber server)")
	} else if _, _, err := net.SplitHostPort(c.XMPPAddr); err != nil {
		bad("xmpp-addr", "%q is not host:port", c.XMPPAddr)
	}
	if c.XMPPDomain == "" {
		bad("xmpp-domain", "required")
	} else if _, err := xmppconn.ParseJID(c.XMPPDomain); err != nil || strings.ContainsAny(c.XMPPDomain, "@/") {
		bad("xmpp-domain", "%q is not a valid XMPP domain", c.XMPPDomain)
	}
	switch xmppconn.TLSMode(c.XMPPTLS) {
	case xmppconn.TLSStartTLS, xmppconn.TLSDirect:
	case xmppconn.TLSNone:
		if host, _, err := net.SplitHostPort(c.XMPPAddr); err == nil && !isLoopback(host) {
			bad("xmpp-tls", "none is only allowed when --xmpp-addr is a loopback address")
		}
	default:
		bad("xmpp-tls", "%q is not starttls, direct or none", c.XMPPTLS)
	}
	if c.XMPPCAFile != "" {
		if _, err := os.Stat(c.XMPPCAFile); err != nil {
			bad("xmpp-ca-file", "%v", err)
		}
	}
	if c.XMPPResourcePrefix == "" || strings.ContainsAny(c.XMPPResourcePrefix, "/@ ") {
		bad("xmpp-resource-prefix", "%q must be a non-empty word", c.XMPPResourcePrefix)
	}
	if c.XMPPMUCService != "" {
		if j, err := xmppconn.ParseJID(c.XMPPMUCService); err != nil || j.Local != "" || j.Resource != "" {
			bad("xmpp-muc-service", "%q is not a service domain", c.XMPPMUCService)
		} else {
			c.XMPPMUCService = j.Domain
		}
	}
	if c.APITokenFile != "" {
		if _, err := readToken(c.APITokenFile); err != nil {
			bad("api-token-file", "%v", err)
		}
	}
	if c.OpsTokenFile != "" {
		if _, err := readToken(c.OpsTokenFile); err != nil {
			bad("ops-token-file", "%v", err)
		}
	}
	if c.SessionCookie == "" || strings.ContainsAny(c.SessionCookie, "=; ") {
		bad("session-cookie", "%q is not a cookie name", c.SessionCookie)
	}
	positive := func(name string, d time.Duration) {
		if d <= 0 {
			bad(name, "must be positive, got %v", d)
		}
	}
	positive("inactivity", c.Inactivity)
	positive("shutdown-timeout", c.ShutdownTimeout)
	positive("recheck-interval", c.RecheckInterval)
	positive("session-max-lifetime", c.SessionMaxLifetime)
	positive("session-timeout", c.SessionTimeout)
	if c.XMPPMaxStanzaSize < 64<<10 || c.XMPPMaxStanzaSize > 64<<20 {
		bad("xmpp-max-stanza-size", "must be within 65536..67108864, got %d", c.XMPPMaxStanzaSize)
	}
	if c.XMPPMaxSendSize < 4096 || c.XMPPMaxSendSize > c.XMPPMaxStanzaSize {
		bad("xmpp-max-send-size", "must be within 4096..--xmpp-max-stanza-size, got %d", c.XMPPMaxSendSize)
	}
	if c.EventBuffer < 10 || c.EventBuffer > 1_000_000 {
		bad("event-buffer", "must be within 10..1000000, got %d", c.EventBuffer)
	}
	if c.EventBufferMB < 1 || c.EventBufferMB > 1024 {
		bad("event-buffer-mb", "must be within 1..1024, got %d", c.EventBufferMB)
	}
	if c.EventMemoryMB < 0 {
		bad("event-memory-mb", "must be 0 (no cap) or more, got %d", c.EventMemoryMB)
	}
	if c.AuthFailLimit < 0 {
		bad("auth-failure-limit", "must be 0 (no limit) or more, got %d", c.AuthFailLimit)
	}
	if c.ConnectLimit < 0 {
		bad("xmpp-connect-limit", "must be 0 (no limit) or more, got %d", c.ConnectLimit)
	}
	if c.RateLimit <= 0 {
		bad("rate-limit", "must be positive")
	}
	if c.GCPercent < 10 || c.GCPercent > 1000 {
		bad("gc-percent", "must be within 10..1000, got %d", c.GCPercent)
	}
	if c.MaxConnections < 16 {
		bad("max-connections", "must be at least 16, got %d", c.MaxConnections)
	}
	if c.MaxPolls < 1 || c.MaxPolls > 1000 {
		bad("max-polls-per-session", "must be within 1..1000, got %d", c.MaxPolls)
	}
	if c.MaxBrowserStreams < 1 || c.MaxBrowserStreams > 1000 {
		bad("max-browser-streams", "must be within 1..1000, got %d", c.MaxBrowserStreams)
	}
	if c.OfflineGrace < 0 || c.OfflineGrace > 5*time.Minute {
		bad("offline-grace", "must be within 0..5m, got %s", c.OfflineGrace)
	}
	if c.BOSHURL == "" || !(strings.HasPrefix(c.BOSHURL, "/") || strings.HasPrefix(c.BOSHURL, "https://") || strings.HasPrefix(c.BOSHURL, "http://")) {
		bad("bosh-url", "%q is not a path or an http(s) URL", c.BOSHURL)
	}
	c.allowedOrigins = nil
	for _, o := range strings.Split(c.AllowedOrigins, ",") {
		if o = strings.TrimSpace(o); o == "" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			bad("allowed-origins", "%q is not an origin (scheme://host[:port])", o)
			continue
		}
		c.allowedOrigins = append(c.allowedOrigins, u.Scheme+"://"+u.Host)
	}
	if c.HTTP2MaxStreams < 1 || c.HTTP2MaxStreams > 100_000 {
		bad("http2-max-streams", "must be within 1..100000, got %d", c.HTTP2MaxStreams)
	}
	if !slices.Contains(phpsession.StoreNames(), c.SessionStore) {
		bad("session-store", "%q is not %s", c.SessionStore, strings.Join(phpsession.StoreNames(), ", "))
	} else {
		pathFlag := "session-save-path"
		if c.SessionStore == "redis" && c.SessionRedis != "" {
			pathFlag = "session-redis"
			if c.SessionSavePath != c.SessionRedis {
				bad("session-redis", "differs from --session-save-path: give the redis save path once")
			}
		}
		if c.SessionSavePath == "" {
			bad(pathFlag, "required with --session-store=%s", c.SessionStore)
		} else {
			rc := c.readerConfig()
			rc.Hash, rc.KeyPrefix = "", ""
			if st, err := phpsession.NewStore(rc); err != nil {
				bad(pathFlag, "%v", err)
			} else {
				st.Close()
			}
		}
	}
	memcache := c.SessionStore == "memcached" || c.SessionStore == "memcache"
	for _, f := range []struct{ name, value, what string }{
		{"session-key-prefix", c.SessionKeyPrefix, "a key prefix (redis: prefix= in its save path)"},
		{"session-hash", c.SessionHash, "a hash setting"},
	} {
		if f.value == "" {
			continue
		}
		if !memcache {
			bad(f.name, "only the memcached and memcache stores take %s", f.what)
			continue
		}
		rc := phpsession.Config{Store: c.SessionStore, SavePath: "127.0.0.1:11211"}
		if f.name == "session-key-prefix" {
			rc.KeyPrefix = f.value
		} else {
			rc.Hash = f.value
		}
		if st, err := phpsession.NewStore(rc); err != nil {
			bad(f.name, "%v", err)
		} else {
			st.Close()
		}
	}
	if _, err := phpsession.ParseSerializer(c.SessionSerializer); err != nil {
		bad("session-serializer", "%q is not php, php_serialize or php_binary", c.SessionSerializer)
	}
	if _, err := phpsession.ParseCharset(c.SessionCharset); err != nil {
		bad("session-charset", "unknown charset %q", c.SessionCharset)
	}
	if c.SessionMinIDLength < 1 || c.SessionMinIDLength > phpsession.MaxIDLength {
		bad("session-min-id-length", "must be within 1..%d", phpsession.MaxIDLength)
	}
	switch c.Profile {
	case "expresso":
	case "generic":
		if c.GenericUserPath == "" {
			bad("generic-user-path", "required with --profile=generic")
		}
		if c.GenericPassword == "" {
			bad("generic-password-path", "required with --profile=generic")
		}
	default:
		bad("profile", "%q is not expresso or generic", c.Profile)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("log-format", "%q is not text or json", c.LogFormat)
	}
	c.validateCluster(bad)
	if len(errs) > 0 {
		return fmt.Errorf("%w:\n  %w", ErrConfig, joinLines(errs))
	}
	return nil
}

func joinLines(errs []error) error {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return errors.New(strings.Join(msgs, "\n  "))
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// readToken reads the API token file: one line, at least 16 bytes.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("token in %s is shorter than 16 bytes", path)
	}
	return tok, nil
}

// readerConfig turns the session flags into a phpsession.Config.
func (c *Config) readerConfig() phpsession.Config {
	profile := phpsession.ExpressoProfile(c.SessionTimeout)
	if c.Profile == "generic" {
		profile = phpsession.GenericProfile(c.GenericUserPath, c.GenericPassword, c.GenericFullname, c.GenericEmail)
	}
	return phpsession.Config{
		Store:       c.SessionStore,
		SavePath:    c.SessionSavePath,
		KeyPrefix:   c.SessionKeyPrefix,
		Hash:        c.SessionHash,
		Serializer:  phpsession.Serializer(c.SessionSerializer),
		MaxLifetime: c.SessionMaxLifetime,
		Charset:     c.SessionCharset,
		Profile:     profile,
		MinIDLength: c.SessionMinIDLength,
		Owner:       c.SessionOwner,
	}
}
