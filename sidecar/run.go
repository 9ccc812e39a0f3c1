package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// version is set at build time with -ldflags -X.
var version = "dev"

const usage = `imsidecar keeps Expresso users online in Jabber while they use the web app.

usage:
  imsidecar [serve] [flags]          run the daemon (the default)
  imsidecar check-config [flags]     validate the configuration and exit
  imsidecar session show [flags] [ID|-]
                                     print a PHP session decoded as JSON, every
                                     secret-shaped value redacted (its length
                                     only); without ID, or with -, the ID is
                                     read from stdin (kept out of ps and
                                     /proc/*/cmdline)
  imsidecar version                  print the version

Every flag has an environment twin IMSIDECAR_<FLAG> (e.g. IMSIDECAR_XMPP_ADDR).
flags:
`

// Run is the whole program: main only builds the context and exits with
// Run's error. getenv supplies the environment twins of the flags; stdin
// is the process's (RunIO takes another).
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return RunIO(ctx, args, getenv, os.Stdin, stdout, stderr)
}

// RunIO is Run reading stdin (`session show` without an ID) from stdin.
func RunIO(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	for _, a := range args {
		if a == "--version" || a == "-version" {
			cmd = "version"
		}
	}
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, "imsidecar", version)
		return nil
	case "help":
		return printUsage(stderr)
	case "serve", "check-config":
	case "session":
		if len(args) == 0 || args[0] != "show" {
			return fmt.Errorf("%w: usage: imsidecar session show [flags] [ID|-]", ErrConfig)
		}
		args = args[1:]
	default:
		return fmt.Errorf("%w: unknown command %q (serve, check-config, session show, version)", ErrConfig, cmd)
	}
	cfg, rest, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return printUsage(stderr)
	}
	if err != nil {
		return err
	}
	if cmd == "session" {
		return sessionShow(ctx, cfg, rest, stdin, stdout)
	}
	if len(rest) > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", ErrConfig, rest)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cmd == "check-config" {
		checkConfigReport(cfg, stdout)
		return nil
	}
	logger, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	if getenv("GOGC") == "" {
		// Most of the daemon's memory is small per-user state that lives
		// as long as the user is online; the default GOGC=100 lets the
		// heap grow to twice that before collecting (docs/PERFORMANCE.md).
		debug.SetGCPercent(cfg.GCPercent)
	}
	err = serve(ctx, cfg, logger, nil)
	if t, ok := logger.Handler().(*throttle); ok {
		t.flush() // the counts of warnings still held back
	}
	return err
}

// checkConfigReport prints what check-config found beyond validity: the
// settings the profile chose, and a files store directory that holds no
// session at all.
func checkConfigReport(cfg *Config, w io.Writer) {
	fmt.Fprintln(w, "imsidecar: configuration OK")
	for _, line := range cfg.fromProfile {
		fmt.Fprintf(w, "imsidecar: from --profile=%s: %s\n", cfg.Profile, line)
	}
	st, err := phpsession.NewStore(cfg.readerConfig())
	if err != nil {
		return // Validate has accepted it
	}
	defer st.Close()
	fst, ok := st.(*phpsession.FileStore)
	if !ok {
		return
	}
	has, err := fst.HasSessions()
	switch {
	case err != nil:
		fmt.Fprintf(w, "imsidecar: warning: --session-save-path: %v\n", err)
	case !has:
		fmt.Fprintf(w, "imsidecar: warning: --session-save-path: %s holds no sess_* file: "+
			"PHP probably keeps its sessions elsewhere (compare session.save_handler and session.save_path in php.ini, "+
			"the Apache configuration and Expresso's .htaccess; Expresso's Debian installer uses /var/lib/php5), "+
			"or this process sees another /tmp or /dev/shm (systemd PrivateTmp= or PrivateDevices=), or nobody is logged in yet\n",
			fst.Dir())
	}
}

func printUsage(w io.Writer) error {
	io.WriteString(w, usage)
	var c Config
	fs := c.flagSet(w)
	fs.PrintDefaults()
	return nil
}

func newLogger(cfg *Config, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("%w: --log-level: %w", ErrConfig, err)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	// Repeated warnings of one source are counted, not each written.
	return slog.New(newThrottle(h, logWindow, logBurst)), nil
}

// sessionShow prints {"id","data","identity"} for one session; never the
// password nor any secret-shaped value (redact.go).
func sessionShow(ctx context.Context, cfg *Config, rest []string, stdin io.Reader, stdout io.Writer) error {
	id, err := sessionIDArg(rest, stdin)
	if err != nil {
		return err
	}
	rc := cfg.readerConfig()
	if err := phpsession.ValidateID(id, rc.MinIDLength); err != nil {
		return err
	}
	st, err := phpsession.NewStore(rc)
	if err != nil {
		return err
	}
	defer st.Close()
	rec, err := st.Load(ctx, id)
	if err == nil {
		err = phpsession.CheckLifetime(rec.ModTime, rc.MaxLifetime, time.Now())
	}
	if err != nil {
		return err
	}
	vars, err := phpsession.Decode(rec.Data, rc.Serializer, phpsession.DefaultLimits)
	if err != nil {
		return err
	}
	cs, err := phpsession.ParseCharset(rc.Charset)
	if err != nil {
		return err
	}
	var identity any
	var secrets [][]byte
	ident, identErr := rc.Profile.Identity(vars, cs, time.Now())
	if identErr == nil {
		// The password as stored (session charset) and base64-encoded, as
		// Expresso keeps a copy of it, is never printed.
		raw := []byte(ident.Password)
		if enc, err := cs.Encode(ident.Password); err == nil {
			raw = enc
		}
		secrets = append(secrets, raw, []byte(ident.Password), []byte(base64.StdEncoding.EncodeToString(raw)))
	}
	data, err := phpsession.MarshalJSONRedact(vars, cs, phpsession.Redaction{Secrets: secrets, Key: secretKey})
	if err != nil {
		return err
	}
	if identErr == nil {
		var last any
		if !ident.LastActivity.IsZero() {
			last = ident.LastActivity.UTC().Format(time.RFC3339)
		}
		identity = map[string]any{"user": ident.User, "password_present": ident.Password != "",
			"fullname": ident.FullName, "email": ident.Email, "last_activity": last}
	}
	out, err := json.MarshalIndent(map[string]any{"id": id, "data": json.RawMessage(data), "identity": identity}, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", out)
	return err
}

// deps lets tests replace the XMPP dialer; nil uses xmppconn.Dial.
type deps struct {
	dial   dialFunc
	reader sessionReader
	// started, when set, is given the API once it serves (tests).
	started func(*api)
}

func serve(ctx context.Context, cfg *Config, logger *slog.Logger, d *deps) error {
	tlsConf, err := xmppTLS(cfg)
	if err != nil {
		return err
	}
	var reader sessionReader
	var closeReader func() error
	if d != nil && d.reader != nil {
		reader, closeReader = d.reader, func() error { return nil }
	} else {
		rc := cfg.readerConfig()
		rc.IdentityOnly = true // the daemon needs only who a session names, not its variables
		r, err := phpsession.Open(ctx, rc)
		if err != nil {
			return err
		}
		reader, closeReader = r, r.Close
	}
	defer closeReader()
	dial := dialFunc(func(ctx context.Context, c xmppconn.Config) (xmppSession, error) { return xmppconn.Dial(ctx, c) })
	if d != nil && d.dial != nil {
		dial = d.dial
	}
	token := ""
	if cfg.APITokenFile != "" {
		if token, err = readToken(cfg.APITokenFile); err != nil {
			return fmt.Errorf("%w: --api-token-file: %w", ErrConfig, err)
		}
	}
	var reg *registry
	m := newMetrics(func() map[xmppconn.State]int { return reg.stateCounts() }, func() int64 { return reg.mem.total.Load() })
	reg = newRegistry(cfg, reader, dial, tlsConf, logger, m)
	a := &api{cfg: cfg, reg: reg, reader: reader, token: token, logger: logger, metrics: m, now: time.Now}
	o := &ops{cfg: cfg, reg: reg, reader: reader, metrics: m, api: a, tokens: []string{token}}
	if cfg.OpsTokenFile != "" {
		opsToken, err := readToken(cfg.OpsTokenFile)
		if err != nil {
			return fmt.Errorf("%w: --ops-token-file: %w", ErrConfig, err)
		}
		o.tokens = append(o.tokens, opsToken)
	}

	rawLn, err := listen(cfg.Listen, cfg.ListenMode, cfg.ListenGroup)
	if err != nil {
		return err
	}
	// The parked long polls' connections come back to the server through
	// resumeLn, above the limit, so they keep their slot while parked.
	apiLn := newResumeListener(newLimitListener(rawLn, cfg.MaxConnections, m.connRejected.Inc))
	apiSrv, endAPIRequests := newAPIServer(cfg, a.routes(), logger)
	a.parked = newParker(a, apiLn, apiSrv)
	a.parked.repoll = apiSrv.Handler
	var opsSrv *http.Server
	var opsLn net.Listener
	if cfg.OpsListen != "" {
		if opsLn, err = listen(cfg.OpsListen, "0660", ""); err != nil {
			apiLn.Close()
			return err
		}
		opsSrv = &http.Server{Handler: o.routes(), ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second,
			MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	}

	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	cl, peerAPI, err := startCluster(runCtx, cfg, a, &wg, errc)
	if err != nil {
		apiLn.Close()
		if opsLn != nil {
			opsLn.Close()
		}
		return err
	}
	wg.Go(func() { reg.janitor(runCtx) })
	wg.Go(func() {
		if err := apiSrv.Serve(apiLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("sidecar: API listener: %w", err)
		}
	})
	if opsSrv != nil {
		wg.Go(func() {
			if err := opsSrv.Serve(opsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("sidecar: ops listener: %w", err)
			}
		})
	}
	logger.Info("imsidecar ready", "version", version, "listen", cfg.Listen, "ops", cfg.OpsListen,
		"xmpp", cfg.XMPPAddr, "domain", cfg.XMPPDomain, "store", cfg.SessionStore, "profile", cfg.Profile)
	sdNotify("READY=1")
	if d != nil && d.started != nil {
		d.started(a)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	// Ordered, bounded shutdown: stop being ready, answer the parked long
	// polls and close their connections, drain HTTP, in cluster mode hand
	// the streams over to the other nodes (clusterhandoff.go), close every
	// stream left with unavailable, close the store.
	logger.Info("imsidecar shutting down")
	sdNotify("STOPPING=1")
	a.draining.Store(true)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	ph := newPhases()
	// The calls in flight end now, not when Shutdown starts: a long poll
	// this node relays to another owner (on the parker's goroutine too,
	// repoll.go) would otherwise hold the parker's shutdown for its whole
	// wait, and with it the hand-over. So do the logins the registry owns
	// (a takeover's, a restart's: connectOwned), which no call's end
	// cuts: a session one opened now would miss the hand-over. The
	// parked connections' and the API's drains still share a third of the
	// timeout (at 2,000 users calls waiting for such logins, when they
	// were the calls' own, held each drain for the whole timeout, leaving
	// nothing for the hand-over); a call still running then is answered,
	// or cut, as the process ends.
	actx, acancel := context.WithTimeout(sctx, cfg.ShutdownTimeout/3)
	endAPIRequests()
	reg.endLogins()
	a.parked.shutdown(actx)
	ph.mark("parked")
	apiSrv.Shutdown(actx)
	acancel()
	ph.mark("api")
	stop()
	// In cluster mode the other nodes log in ahead for this node's
	// sessions and take each over once ready, while this node serves the
	// rest (forwarded) and renews their leases (clusterhandoff.go); the
	// API is closed first, so that a balancer sends calls elsewhere.
	cl.handOver(sctx)
	ph.mark("handover")
	peerAPI.shutdown(sctx)
	ph.mark("peer")
	reg.shutdown(sctx)
	ph.mark("streams")
	cl.stopAll(sctx)
	if opsSrv != nil {
		opsSrv.Shutdown(sctx)
	}
	wg.Wait()
	ph.mark("rest")
	logger.Info("imsidecar stopped", ph.attrs()...)
	return runErr
}

// phases times the steps of the shutdown for its last log line
// ("imsidecar stopped took=… parked=… api=… handover=…", docs/CLUSTER.md).
type phases struct {
	start, last time.Time
	steps       []any // name, duration, ...
}

func newPhases() *phases {
	now := time.Now()
	return &phases{start: now, last: now}
}

// mark ends the step name.
func (p *phases) mark(name string) {
	now := time.Now()
	p.steps = append(p.steps, name, now.Sub(p.last).Round(time.Millisecond))
	p.last = now
}

// attrs are the log attributes: the whole time, then each step's.
func (p *phases) attrs() []any {
	return append([]any{"took", time.Since(p.start).Round(time.Millisecond)}, p.steps...)
}

func xmppTLS(cfg *Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.XMPPServerName}
	if tc.ServerName == "" {
		tc.ServerName = cfg.XMPPDomain
	}
	if cfg.XMPPCAFile != "" {
		pem, err := os.ReadFile(cfg.XMPPCAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: --xmpp-ca-file: %w", ErrConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: --xmpp-ca-file: no PEM certificates in %s", ErrConfig, cfg.XMPPCAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// listen opens host:port or unix:/path (with mode and group).
func listen(addr, mode, group string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("sidecar: listen %s: %w", addr, err)
		}
		return ln, nil
	}
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		os.Remove(path) // a stale socket from a previous run
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("sidecar: listen %s: %w", addr, err)
	}
	m, _ := strconv.ParseUint(mode, 8, 32)
	if err := os.Chmod(path, os.FileMode(m)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("sidecar: chmod %s: %w", path, err)
	}
	if group != "" {
		gid, err := strconv.Atoi(group)
		if err != nil {
			g, err := user.LookupGroup(group)
			if err != nil {
				ln.Close()
				return nil, fmt.Errorf("%w: --listen-group: %w", ErrConfig, err)
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("sidecar: chown %s: %w", path, err)
		}
	}
	return ln, nil
}

// sdNotify tells systemd (Type=notify) about readiness and shutdown.
func sdNotify(state string) {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return
	}
	if strings.HasPrefix(sock, "@") {
		sock = "\x00" + sock[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}
