package xmppconn

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// TLSMode selects how the stream is secured.
type TLSMode string

const (
	// TLSStartTLS upgrades the TCP connection with STARTTLS and refuses a
	// server that does not offer it (ErrTLSRequired). The default.
	TLSStartTLS TLSMode = "starttls"
	// TLSDirect starts TLS immediately (XEP-0368, usually port 5223).
	TLSDirect TLSMode = "direct"
	// TLSNone sends everything in clear text. It is accepted only when
	// Addr is a loopback address; otherwise Dial returns ErrTLSRequired.
	TLSNone TLSMode = "none"
)

// Defaults applied by Dial to zero Config fields.
//
// DefaultMaxStanzaSize is four times the 256 KiB Prosody and ejabberd
// accept from a client: a server re-escapes what it relays (Prosody writes
// each ' or " as a 6-byte &apos; or &quot;), so a stanza it accepted may
// arrive larger than it left; 1 MiB holds any stanza the server accepted
// unless more than 60% of it was quote characters. A larger one is skipped
// and reported (Dropped), never fatal.
//
// DefaultMaxSendSize is below every server's default limit on what a
// client sends: Prosody's c2s_stanza_size_limit (256 KiB), the 256 KiB of
// the ejabberd.yml ejabberd ships, and the 64 KiB of its older example
// configurations (its own option default is infinity).
const (
	DefaultMaxStanzaSize = 1 << 20
	DefaultMaxSendSize   = 60 << 10
	DefaultPingInterval  = 60 * time.Second
	DefaultPingTimeout   = 20 * time.Second
	DefaultIQTimeout     = 30 * time.Second
	DefaultMinBackoff    = time.Second
	DefaultMaxBackoff    = 2 * time.Minute
	DefaultWriteTimeout  = 10 * time.Second
	DefaultMaxQueue      = 256
)

// Config describes one client connection. Zero fields take the defaults
// above; Domain, User and Password are required.
type Config struct {
	Addr      string // host:port; "" = DNS SRV _xmpp-client._tcp.Domain (_xmpps-client for TLSDirect), else Domain:5222 (5223)
	Domain    string // XMPP domain
	TLS       TLSMode
	TLSConfig *tls.Config // RootCAs / ServerName; nil = system roots, ServerName=Domain. Used as is (shared) when ServerName and MinVersion ≥ TLS 1.2 are set, else copied once per Conn
	User      string      // localpart
	Password  string
	Resource  string // "" lets the server choose
	Handler   Handler
	Logger    *slog.Logger

	// InitialPresence is sent after the first stream; nil = available. It
	// must pass Presence.Validate (ErrConfig wrapping ErrInvalidArgument). A
	// later fresh (not resumed) stream sends the last broadcast presence
	// given to SendPresence instead, or this one if there was none.
	InitialPresence *Presence
	// MaxStanzaSize bounds the memory one inbound stanza may take: a
	// larger one is read through without being kept, counted as handled
	// and reported as *Dropped; the stream stays up. Default 1 MiB.
	MaxStanzaSize int
	// MaxSendSize bounds the encoded size of a stanza sent: a larger one
	// is refused with ErrSendTooLarge and never queued. Default 60 KiB.
	MaxSendSize int

	PingInterval time.Duration // idle time before a liveness probe; default 60s
	PingTimeout  time.Duration // default 20s
	IQTimeout    time.Duration // default 30s
	// Reconnect reconnects with backoff after a broken stream (never after ErrAuth).
	Reconnect              bool
	MinBackoff, MaxBackoff time.Duration
	// Carbons enables XEP-0280 message carbons.
	Carbons                 bool
	DisableStreamManagement bool

	// WriteTimeout bounds every write to the socket; default 10s.
	WriteTimeout time.Duration
	// MaxQueue bounds the messages and presences queued while the stream is
	// down; beyond it Send returns ErrNotConnected. Default 256.
	MaxQueue int
	// AuthGate, if set, admits every authentication attempt, the first
	// and every reconnection, and learns each outcome (see AuthGate).
	AuthGate AuthGate
	// ConnectGate, if set, admits every connection attempt, for as long
	// as its TCP connection, TLS and first stream features take (see
	// ConnectGate).
	ConnectGate ConnectGate
	// SoftwareName and SoftwareVersion answer jabber:iq:version requests;
	// defaults "imsidecar" and "1".
	SoftwareName, SoftwareVersion string

	// ResumeStore, when set, learns every change of the XEP-0198 state
	// as it happens, so that another Conn, in this process or another,
	// can Resume the session (resume.go). The Conn then acknowledges to
	// the server only the inbound count the store accepted, journals each
	// stanza before writing it, and, while the stream is down, journals
	// messages and presences as unacknowledged (bounded by MaxQueue)
	// instead of queueing them in memory only.
	ResumeStore ResumeStore
	// BeforeReconnect, when set, is asked before every reconnection
	// attempt (not the first login), before it dials, and may refuse it:
	// the Conn then stops as detached (its Err wraps ErrDetached and the
	// refusal), sending nothing, so that the server keeps the session for
	// whoever owns it now. A process that froze while another resumed its
	// session uses it to step aside instead of stealing it back. An error
	// wrapping ErrNotAdmitted means "not now" instead (the hook cannot
	// tell yet, e.g. the database it asks does not answer): the attempt
	// fails without dialling, costing the server nothing, and the Conn
	// asks again after the same backoff, neither grown nor reset. It runs
	// on the Conn's goroutine; ctx ends with Close.
	BeforeReconnect func(ctx context.Context) error

	// Tap, when set, is handed every inbound stanza meant for the user's
	// clients (raw.go): messages, presences, roster pushes and IQ
	// answers the Conn did not ask for itself. It runs on the reading
	// goroutine, after the Handler, and must not block.
	Tap func(*Stanza)
}

var discardLogger = slog.New(slog.DiscardHandler)

// completeTLS returns tc itself when it already names the server and a
// minimum version (so that thousands of connections share one config), or
// a completed copy: ServerName defaults to the XMPP domain, MinVersion to
// TLS 1.2.
func completeTLS(tc *tls.Config, domain string) *tls.Config {
	if tc != nil && tc.ServerName != "" && tc.MinVersion >= tls.VersionTLS12 {
		return tc
	}
	if tc == nil {
		tc = &tls.Config{}
	} else {
		tc = tc.Clone()
	}
	if tc.ServerName == "" {
		tc.ServerName = domain
	}
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	return tc
}

type discardHandler struct{}

func (discardHandler) HandleEvent(Event) {}

// normalize validates cfg and fills in defaults.
func (cfg Config) normalize() (Config, error) {
	bad := func(format string, a ...any) (Config, error) {
		return cfg, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)
	}
	if cfg.Domain == "" {
		return bad("Domain is empty")
	}
	d, err := ParseJID(cfg.Domain)
	if err != nil || d.Local != "" || d.Resource != "" {
		return bad("Domain %q is not a valid XMPP domain", cfg.Domain)
	}
	cfg.Domain = d.Domain
	if cfg.User == "" {
		return bad("User is empty")
	}
	u, err := ParseJID(cfg.User + "@" + cfg.Domain)
	if err != nil || u.Resource != "" {
		return bad("User is not a valid localpart")
	}
	cfg.User = u.Local
	if cfg.Password == "" {
		return bad("Password is empty")
	}
	if cfg.Resource != "" {
		r, err := ParseJID(cfg.Domain + "/" + cfg.Resource)
		if err != nil {
			return bad("Resource is not a valid resourcepart")
		}
		cfg.Resource = r.Resource
	}
	switch cfg.TLS {
	case "":
		cfg.TLS = TLSStartTLS
	case TLSStartTLS, TLSDirect:
	case TLSNone:
		if !isLoopbackAddr(cfg.Addr) {
			return cfg, fmt.Errorf("%w: plaintext refused for non-loopback address %q", ErrTLSRequired, cfg.Addr)
		}
	default:
		return bad("unknown TLS mode %q", cfg.TLS)
	}
	if cfg.Addr != "" {
		if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
			return bad("Addr %q: %v", cfg.Addr, err)
		}
	}
	if cfg.Handler == nil {
		cfg.Handler = discardHandler{}
	}
	if cfg.Logger == nil {
		cfg.Logger = discardLogger
	}
	if cfg.TLS != TLSNone {
		cfg.TLSConfig = completeTLS(cfg.TLSConfig, cfg.Domain)
	}
	type dur struct {
		p   *time.Duration
		def time.Duration
		n   string
	}
	for _, f := range []dur{
		{&cfg.PingInterval, DefaultPingInterval, "PingInterval"},
		{&cfg.PingTimeout, DefaultPingTimeout, "PingTimeout"},
		{&cfg.IQTimeout, DefaultIQTimeout, "IQTimeout"},
		{&cfg.MinBackoff, DefaultMinBackoff, "MinBackoff"},
		{&cfg.MaxBackoff, DefaultMaxBackoff, "MaxBackoff"},
		{&cfg.WriteTimeout, DefaultWriteTimeout, "WriteTimeout"},
	} {
		if *f.p < 0 {
			return bad("%s is negative", f.n)
		}
		if *f.p == 0 {
			*f.p = f.def
		}
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		return bad("MaxBackoff %v < MinBackoff %v", cfg.MaxBackoff, cfg.MinBackoff)
	}
	for _, f := range []struct {
		p        *int
		def, min int
		n        string
	}{
		{&cfg.MaxStanzaSize, DefaultMaxStanzaSize, 4096, "MaxStanzaSize"},
		{&cfg.MaxSendSize, DefaultMaxSendSize, 1024, "MaxSendSize"},
	} {
		if *f.p < 0 {
			return bad("%s is negative", f.n)
		}
		if *f.p == 0 {
			*f.p = f.def
		}
		if *f.p < f.min {
			return bad("%s %d is below %d", f.n, *f.p, f.min)
		}
	}
	if cfg.MaxQueue < 0 {
		return bad("MaxQueue is negative")
	}
	if cfg.MaxQueue == 0 {
		cfg.MaxQueue = DefaultMaxQueue
	}
	if cfg.SoftwareName == "" {
		cfg.SoftwareName = "imsidecar"
	}
	if cfg.SoftwareVersion == "" {
		cfg.SoftwareVersion = "1"
	}
	if cfg.InitialPresence != nil {
		p := *cfg.InitialPresence
		if err := p.Validate(); err != nil {
			return cfg, fmt.Errorf("%w: InitialPresence: %w", ErrConfig, err)
		}
		cfg.InitialPresence = &p
	}
	return cfg, nil
}

// isLoopbackAddr reports whether host:port names a loopback address.
func isLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
