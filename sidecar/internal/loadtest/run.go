package loadtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// The paths a run can measure.
const (
	PathBare      = "bare"      // xmppconn straight to Prosody's c2s port: the baseline
	PathSidecar   = "sidecar"   // HTTP API of imsidecar, which holds the c2s streams
	PathBOSH      = "bosh"      // Prosody's mod_bosh
	PathWebSocket = "websocket" // Prosody's mod_websocket
	// The same BOSH and WebSocket clients through imsidecar, attached to
	// the streams it holds (session cookie, SASL PLAIN as the session's
	// own user).
	PathSidecarBOSH      = "sidecar-bosh"
	PathSidecarWebSocket = "sidecar-websocket"
	// The sidecar path with STARTTLS to Prosody, verified against a
	// throw-away CA: the production setting when the Jabber server is
	// another host. Prosody's own paths stay in clear.
	PathSidecarTLS = "sidecar-tls"
	// The sidecar path through ClusterNodes imsidecar nodes in cluster
	// mode sharing one Redis (docs/CLUSTER.md), with sticky traffic: each
	// user's calls always go to the node that claimed the session at its
	// connect (user i's to node i mod ClusterNodes), as a sticky balancer
	// sends them.
	PathSidecarCluster = "sidecar-cluster"
	// The same with round-robin traffic: each user's connect goes to node
	// i mod ClusterNodes, which claims the session, and every later call
	// (send, poll) to the next node in turn, so most are forwarded to the
	// owner over the peer listener.
	PathSidecarClusterRR = "sidecar-cluster-rr"
)

// Config is one run of the generator.
type Config struct {
	Users    int           // simulated users online at once
	Rate     float64       // target messages per second
	Duration time.Duration // of the message phase at Rate
	// SweepRates is the knee ladder: after the target phase every path
	// runs these rates in ascending order, each for SweepTime, and stops
	// at the first that does not keep up (see Check). The highest rate
	// that held (p99 within 50 ms) before the first that did not is the
	// path's knee; the highest that kept up, its capacity. Empty: neither.
	SweepRates []float64
	SweepTime  time.Duration
	// SweepSettle is the least pause after a phase has drained (every
	// delivery arrived or timed out) before the next starts; the next also
	// waits until the path's processes are idle again (see quiesce).
	// Default 500 ms.
	SweepSettle time.Duration
	Paths       []string // default: bare, sidecar, bosh, websocket
	Concurrency int      // logins in flight during the storm; default 100
	SourceAddrs int      // 127.0.0.x client source addresses; default Users/2000+1
	Transport   string   // of the sidecar path's HTTP API: TransportHTTP1 (default) or TransportH2C
	PHPSample   int      // sessions written by the real PHP CLI; the rest by EncodeSession
	SidecarBin  string   // the imsidecar binary
	SidecarEnv  []string // extra environment for it, e.g. GODEBUG=gctrace=1
	// ClusterNodes is how many imsidecar nodes the cluster paths run
	// (default 3); ClusterLeaseTTL their --cluster-lease-ttl (0: the
	// daemon's default).
	ClusterNodes    int
	ClusterLeaseTTL time.Duration
	// MemSlope splits the sidecar paths' login storm in two halves with
	// the same 2 s settle after each, and reads the imsidecar processes'
	// RSS after each: PathResult.MemSlopeKBPerUser is the growth between
	// the two per user added, a per-user cost from which each process's
	// fixed one-offs (binary pages, runtime metadata, pools: mostly paid
	// in the first half) drop out. The login rate and CPU per login of
	// such a run include the first settle; MemPerUserKB is measured as
	// without it (growth over the whole storm per online user).
	MemSlope bool
	// ProsodyConfig holds extra lines for the global section of every
	// Prosody's configuration, e.g. `network_settings = { nagle = false }`.
	ProsodyConfig []string
	// LatencyDir, when set, receives one CSV per path and phase with every
	// message's send start, send return and delivery times (PATH-PHASE.csv).
	LatencyDir string
	// TraceDir, when set, receives a runtime/trace of the generator during
	// each path's target phase (PATH.trace).
	TraceDir string
	// LagDir, when set, receives PATH-prosody-lag.log from a probe module
	// loaded into each Prosody (see LagProbe): its event-loop stalls and
	// Lua GC cycle ends, in Unix time like the LatencyDir files.
	LagDir string
	// EventsDir, when set, loads a probe into each Prosody that accounts
	// its CPU per event (stanza) name (see EventProbe); the login storm's
	// share goes into PathResult.LoginEvents and PATH-prosody-events.txt.
	EventsDir string
	// ProsodyCPUs, when set, pins each Prosody to these CPUs and the
	// generator and imsidecar to the others, so the storm measures
	// Prosody's work rather than how the scheduler shares cores among the
	// three (as when the Jabber server runs on a host of its own).
	// Neighbours of the run still go anywhere.
	ProsodyCPUs []int
	otherCPUs   []int         // the rest of this process's CPUs, for ProsodyCPUs
	Dir         string        // scratch directory (Prosody, sessions, logs)
	Timeout     time.Duration // bound on the whole run; default 30 min
	Logger      *slog.Logger  // progress; nil = discard
}

// PathResult holds one path's figures.
type PathResult struct {
	Path         string  `json:"path"`
	Users        int     `json:"users"`
	Online       int     `json:"online"`
	LoginErrors  int     `json:"login_errors"`
	LoginsPerSec float64 `json:"logins_per_sec"`
	// MemPerUserKB is the RSS growth per online user of the process the
	// path adds: imsidecar for the sidecar, Prosody for BOSH and WebSocket,
	// nothing for the bare client (0).
	MemPerUserKB float64 `json:"mem_per_user_kb"`
	// SidecarFileKBPerUser is the file-backed part of MemPerUserKB on the
	// sidecar paths (RssFile: the binary's pages touched for the first
	// time, a one-off per process however many users it holds).
	SidecarFileKBPerUser float64 `json:"imsidecar_file_kb_per_user,omitempty"`
	// ProsodyMemPerUserKB is Prosody's own RSS growth per online user.
	ProsodyMemPerUserKB float64 `json:"prosody_mem_per_user_kb"`
	// MemSlopeKBPerUser (Config.MemSlope, sidecar paths) is the imsidecar
	// processes' RSS growth, summed, from MemSlopeFrom users online to
	// Online, per user added: the per-user cost without the per-process
	// one-offs that MemPerUserKB spreads over the users.
	MemSlopeKBPerUser float64 `json:"mem_slope_kb_per_user,omitempty"`
	MemSlopeFrom      int     `json:"mem_slope_from,omitempty"`
	// CPUPer1k is the CPU seconds per 1,000 delivered messages of the
	// processes the path uses: imsidecar + Prosody, or Prosody alone.
	CPUPer1k        float64 `json:"cpu_s_per_1k_msgs"`
	ProsodyCPUPer1k float64 `json:"prosody_cpu_s_per_1k_msgs"`
	// SidecarCPUPer1k is imsidecar's own share of CPUPer1k (the sidecar
	// paths only): CPU seconds per 1,000 delivered messages, which is
	// milliseconds per message.
	SidecarCPUPer1k float64 `json:"imsidecar_cpu_s_per_1k_msgs,omitempty"`
	// SidecarFDs is the descriptors imsidecar holds with every user online
	// and polling; SidecarConns the API connections the client dialed.
	SidecarFDs   int `json:"sidecar_fds,omitempty"`
	SidecarConns int `json:"sidecar_conns,omitempty"`
	// LoginCPUms is the CPU milliseconds per login of the processes the
	// path uses during the login storm, ProsodyLoginCPUms Prosody's part.
	LoginCPUms        float64 `json:"login_cpu_ms"`
	ProsodyLoginCPUms float64 `json:"prosody_login_cpu_ms"`
	// GeneratorLoginCPUms is the generator's own CPU milliseconds per
	// login during the storm: the bare path's XMPP clients, the sidecar
	// path's HTTP clients. On a machine with fewer free cores than the
	// storm's processes it competes with the path's for the CPU.
	GeneratorLoginCPUms float64 `json:"generator_login_cpu_ms"`
	// MachineLoginCPUms is the CPU milliseconds per login of the whole
	// machine during the storm, every process: what it holds beyond the
	// path's processes and the generator is the neighbours'.
	MachineLoginCPUms float64 `json:"machine_login_cpu_ms"`
	// MachineLoginStealms is the hypervisor's steal time per login over
	// the storm, every vCPU: time this VM had work and no real CPU.
	MachineLoginStealms float64 `json:"machine_login_steal_ms"`
	// LoginProsodyKernel is Prosody's context switches and scheduling per
	// login during the storm.
	LoginProsodyKernel *ProcCounters `json:"login_prosody_kernel,omitempty"`
	// LoginEvents is Prosody's CPU and Lua instructions per event name
	// during the storm, per login, and each event's count over the storm
	// (with Config.EventsDir only), largest CPU first.
	LoginEvents []EventStat `json:"login_events,omitempty"`
	// Cluster holds what the cluster paths measure besides the rest: the
	// Redis the nodes share, and how the calls reached the owners.
	Cluster *ClusterResult `json:"cluster,omitempty"`
	Phase
	// Sweep holds the knee ladder's steps, in order, up to the first that
	// did not keep up.
	Sweep []Phase `json:"sweep,omitempty"`
	// KneeRate is the highest ladder rate that held (p99 within 50 ms, see
	// Check) before the first that did not (0: the first did not);
	// KneeBounded says a step failed, so the knee lies below that step's
	// rate (false: every step held and the knee is at least KneeRate);
	// KneeStop says what failed at which rate.
	KneeRate    float64 `json:"knee_rate"`
	KneeBounded bool    `json:"knee_bounded"`
	KneeStop    string  `json:"knee_stop,omitempty"`
	// CapacityRate and the rest are the same for keeping up (nothing lost,
	// 90% of the rate delivered, p50 within 50 ms) whatever the p99.
	CapacityRate    float64 `json:"capacity_rate"`
	CapacityBounded bool    `json:"capacity_bounded"`
	CapacityStop    string  `json:"capacity_stop,omitempty"`
}

// loginKInstr is the Lua instructions (thousands) Prosody ran per login
// during the storm, from the event probe; 0 without it.
func (p *PathResult) loginKInstr() float64 {
	for _, e := range p.LoginEvents {
		if e.Name == "lua/kinstr" && p.Online > 0 {
			return float64(e.Count) / float64(p.Online)
		}
	}
	return 0
}

// Phase is one message phase at a target rate.
type Phase struct {
	TargetRate float64 `json:"target_rate"`
	// UsersSkipped counts online users left out because a send of theirs
	// failed or a message to or from them was lost in an earlier phase.
	UsersSkipped int `json:"users_skipped,omitempty"`
	// OfferedPerSec is the rate the sends were started at: Sent over the
	// sending time (or the planned duration, whichever is longer).
	OfferedPerSec float64 `json:"offered_per_sec"`
	Sent          int     `json:"sent"`
	SendErrors    int     `json:"send_errors"`
	Delivered     int     `json:"delivered"`
	// Lost counts messages whose send call succeeded but that never
	// reached the receiver within 20 s of the last send. A message whose
	// send call failed but that arrived all the same counts in SendErrors
	// and in Delivered, never in Lost.
	Lost            int     `json:"lost"`
	Duplicates      int     `json:"duplicates"`
	DeliveredPerSec float64 `json:"delivered_per_sec"`
	P50ms           float64 `json:"p50_ms"`
	P99ms           float64 `json:"p99_ms"`
	Maxms           float64 `json:"max_ms"`
	// Attempt numbers the runs of a knee step at one rate (2: a repeat).
	Attempt int `json:"attempt,omitempty"`
	// KeptUp and Held are the phase against the knee criteria (see
	// Check); Why says what failed when it did not hold.
	KeptUp          bool   `json:"kept_up"`
	Held            bool   `json:"held"`
	Why             string `json:"why,omitempty"`
	cpuPath, cpuPro float64
	// The cluster paths' Redis over the phase: its CPU seconds, the
	// commands it ran by name and the seconds between the two readings.
	cpuRedis   float64
	redisCalls map[string]int64
	redisSecs  float64
}

// client is one online user on some path.
type client interface {
	Send(ctx context.Context, to, body string) error
	Close(ctx context.Context) error
}

func (c *Config) defaults() error {
	if c.Users < 2 {
		return errors.New("loadtest: at least 2 users")
	}
	if c.Rate <= 0 || c.Duration <= 0 {
		return errors.New("loadtest: rate and duration must be positive")
	}
	if len(c.Paths) == 0 {
		c.Paths = []string{PathBare, PathSidecar, PathBOSH, PathWebSocket}
	}
	for _, p := range c.Paths {
		switch p {
		case PathBare, PathBOSH, PathWebSocket:
		case PathSidecar, PathSidecarBOSH, PathSidecarWebSocket, PathSidecarTLS, PathSidecarCluster, PathSidecarClusterRR:
			if c.SidecarBin == "" {
				return errors.New("loadtest: the sidecar path needs SidecarBin")
			}
		default:
			return fmt.Errorf("loadtest: unknown path %q", p)
		}
	}
	switch c.Transport {
	case "":
		c.Transport = TransportHTTP1
	case TransportHTTP1, TransportH2C:
	default:
		return fmt.Errorf("loadtest: unknown transport %q (%s or %s)", c.Transport, TransportHTTP1, TransportH2C)
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 100
	}
	if len(c.ProsodyCPUs) > 0 {
		rest, err := splitCPUs(c.ProsodyCPUs)
		if err != nil {
			return err
		}
		c.otherCPUs = rest
	}
	if c.ClusterNodes <= 0 {
		c.ClusterNodes = 3
	}
	if c.ClusterNodes > 100 {
		return errors.New("loadtest: at most 100 cluster nodes (127.0.0.11 … 127.0.0.110)")
	}
	if c.SourceAddrs <= 0 {
		c.SourceAddrs = c.Users/2000 + 1
	}
	if c.SweepTime <= 0 {
		c.SweepTime = 5 * time.Second
	}
	if c.SweepSettle <= 0 {
		c.SweepSettle = 500 * time.Millisecond
	}
	for _, r := range c.SweepRates {
		if !(r > 0) {
			return fmt.Errorf("loadtest: sweep rate %v is not positive", r)
		}
	}
	c.SweepRates = slices.Clone(c.SweepRates)
	slices.Sort(c.SweepRates)
	c.SweepRates = slices.Compact(c.SweepRates)
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Dir == "" {
		return errors.New("loadtest: Dir is required")
	}
	return nil
}

func userName(i int) string { return "u" + strconv.Itoa(i) }
func password(i int) string { return "pw-" + strconv.Itoa(i) + "-bench" }

// Run measures every configured path, one after the other, each against a
// freshly started Prosody (so "from cold" holds and one path's heap does
// not flatter the next).
func Run(ctx context.Context, cfg Config) ([]PathResult, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	for _, d := range []string{cfg.LatencyDir, cfg.TraceDir, cfg.LagDir, cfg.EventsDir} {
		if d != "" {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, fmt.Errorf("loadtest: %w", err)
			}
		}
	}
	// Prosody, imsidecar and this process each hold a socket per user and
	// more; children inherit the limit.
	if lim, err := RaiseOpenFiles(uint64(cfg.Users)*3 + 4096); err != nil {
		return nil, err
	} else if lim < uint64(cfg.Users)*2+1024 {
		cfg.Logger.Warn("open-files limit may be too low", "limit", lim, "users", cfg.Users)
	}
	if len(cfg.ProsodyCPUs) > 0 {
		if err := pinTasks(os.Getpid(), cfg.otherCPUs); err != nil {
			return nil, err
		}
		cfg.Logger.Info("pinned", "prosody_cpus", cfg.ProsodyCPUs, "generator_and_imsidecar_cpus", cfg.otherCPUs)
	}
	var out []PathResult
	for _, p := range cfg.Paths {
		cfg.Logger.Info("path", "path", p, "users", cfg.Users)
		r, err := runPath(ctx, cfg, p)
		if err != nil {
			return out, fmt.Errorf("%s path: %w", p, err)
		}
		out = append(out, r)
	}
	return out, nil
}

type rig struct {
	cfg    Config
	path   string
	pro    *Prosody
	d      *daemon      // the path's imsidecar; a cluster path's first node
	nodes  []*daemon    // every imsidecar of the path: d alone, or the cluster's nodes
	redis  *redisServer // the cluster paths' Redis
	dialer *sourceDialer
	hc     *http.Client
	sids   []string

	clients []client
	broken  []bool // users whose send failed or whose message was lost; phases run one at a time
	phaseMu sync.Mutex
	track   *tracker
}

func runPath(ctx context.Context, cfg Config, path string) (PathResult, error) {
	res := PathResult{Path: path, Users: cfg.Users}
	dir := filepath.Join(cfg.Dir, path)
	extra := cfg.ProsodyConfig
	var probes []probe
	if cfg.LagDir != "" {
		probes = append(probes, lagProbeOf(filepath.Join(cfg.LagDir, path+"-prosody-lag.log")))
	}
	eventsFile := filepath.Join(dir, "prosody-events.txt")
	if cfg.EventsDir != "" {
		probes = append(probes, eventProbeOf(eventsFile))
	}
	var certs *xmppconntest.CertBundle
	mods := prosodyModules
	if path == PathSidecarTLS {
		var err error
		if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o700); err != nil {
			return res, fmt.Errorf("loadtest: %w", err)
		}
		if certs, err = xmppconntest.NewCertBundle(filepath.Join(dir, "certs"), Domain, "localhost"); err != nil {
			return res, fmt.Errorf("loadtest: %w", err)
		}
		mods = append(slices.Clone(mods), "tls")
	}
	if len(probes) > 0 {
		lines, err := installProbesWith(dir, mods, probes...)
		if err != nil {
			return res, err
		}
		extra = append(lines, extra...)
	}
	pro, err := newProsody(dir, certs, extra)
	if err != nil {
		return res, err
	}
	users := make(map[string]string, cfg.Users)
	for i := range cfg.Users {
		users[userName(i)] = password(i)
	}
	if err := pro.Register(users); err != nil {
		return res, err
	}
	if err := pro.Start(ctx); err != nil {
		return res, err
	}
	defer pro.Stop()
	if len(cfg.ProsodyCPUs) > 0 {
		if err := pinTasks(pro.PID(), cfg.ProsodyCPUs); err != nil {
			return res, err
		}
	}
	r := &rig{cfg: cfg, path: path, pro: pro, dialer: newSourceDialer(cfg.SourceAddrs)}
	r.hc = r.dialer.httpClient()
	defer r.hc.CloseIdleConnections()

	if sidecarPath(path) {
		sessDir := filepath.Join(dir, "sessions")
		if err := os.MkdirAll(sessDir, 0o700); err != nil {
			return res, fmt.Errorf("loadtest: %w", err)
		}
		if err := r.writeSessions(ctx, sessDir); err != nil {
			return res, err
		}
		xmppTLS := []string{"--xmpp-tls=none"}
		if certs != nil {
			xmppTLS = []string{"--xmpp-tls=starttls", "--xmpp-ca-file=" + certs.CAFile}
		}
		if clusterPath(path) {
			err = r.startCluster(ctx, dir, sessDir, xmppTLS)
			defer r.stopCluster()
		} else {
			r.d, err = startDaemon(ctx, cfg.SidecarBin, cfg.SidecarEnv, dir, sessDir, pro, xmppTLS...)
			if r.d != nil {
				r.nodes = []*daemon{r.d}
				defer r.d.Stop()
			}
		}
		if err != nil {
			return res, err
		}
		if cfg.Transport == TransportH2C {
			r.hc = r.dialer.h2cClient()
			defer r.hc.CloseIdleConnections()
		}
	}
	time.Sleep(time.Second) // let both settle before the idle figures
	proBefore, err := RSS(pro.PID())
	if err != nil {
		return res, err
	}
	dBefore, dFileBefore, err := r.nodesRSS()
	if err != nil {
		return res, err
	}
	var redis0 redisStats
	if r.redis != nil {
		if redis0, err = r.redis.stats(ctx); err != nil {
			return res, err
		}
	}

	var events0 map[string]EventStat
	if cfg.EventsDir != "" {
		if events0, err = r.readEvents(ctx, eventsFile); err != nil {
			return res, err
		}
	}

	// Everything the users run (poll loops) lives until life ends.
	life, stop := context.WithCancel(ctx)
	defer stop()
	r.track = newTracker(0, 0)
	s0, err := r.sampleLogin(pro.PID())
	if err != nil {
		return res, err
	}
	start := time.Now()
	r.clients = make([]client, cfg.Users)
	r.broken = make([]bool, cfg.Users)
	from, halfOnline, halfErrs, dHalf := 0, 0, 0, int64(0)
	var halfErr error
	if cfg.MemSlope && sidecarPath(path) {
		from = cfg.Users / 2
		halfOnline, halfErrs, halfErr = r.loginAll(ctx, life, 0, from)
		time.Sleep(2 * time.Second) // as after the whole storm, below
		if dHalf, _, err = r.nodesRSS(); err != nil {
			return res, err
		}
	}
	online, errs, firstErr := r.loginAll(ctx, life, from, cfg.Users)
	elapsed := time.Since(start)
	if halfErr != nil {
		firstErr = halfErr
	}
	online, errs = online+halfOnline, errs+halfErrs
	s1, err := r.sampleLogin(pro.PID())
	if err != nil {
		return res, err
	}
	res.Online, res.LoginErrors = online, errs
	res.LoginsPerSec = float64(online) / elapsed.Seconds()
	if online > 0 {
		res.LoginCPUms = (s1.cpu - s0.cpu) * 1000 / float64(online)
		res.ProsodyLoginCPUms = (s1.prosody - s0.prosody) * 1000 / float64(online)
		res.GeneratorLoginCPUms = (s1.gen - s0.gen) * 1000 / float64(online)
		res.MachineLoginCPUms = (s1.machine - s0.machine) * 1000 / float64(online)
		res.MachineLoginStealms = (s1.steal - s0.steal) * 1000 / float64(online)
		kernel := s0.kernel.perUnit(s1.kernel, float64(online))
		res.LoginProsodyKernel = &kernel
	}
	cfg.Logger.Info("logged in", "path", path, "online", online, "errors", errs, "seconds", elapsed.Seconds(), "first_error", firstErr)
	if online < 2 {
		return res, fmt.Errorf("loadtest: only %d users online: %v", online, firstErr)
	}
	time.Sleep(2 * time.Second) // let the storm's garbage settle
	if cfg.EventsDir != "" {
		// What the sidecar does right after a login (the avatar) is part
		// of it: the 2 s above cover it.
		events1, err := r.readEvents(ctx, eventsFile)
		if err != nil {
			return res, err
		}
		res.LoginEvents = eventDelta(events0, events1)
		for i := range res.LoginEvents {
			res.LoginEvents[i].SelfSec /= float64(online)
			res.LoginEvents[i].SelfKInstr /= float64(online)
		}
		if err := writeEvents(filepath.Join(cfg.EventsDir, path+"-prosody-events.txt"), res); err != nil {
			return res, err
		}
	}
	proAfter, err := RSS(pro.PID())
	if err != nil {
		return res, err
	}
	res.ProsodyMemPerUserKB = float64(proAfter-proBefore) / 1024 / float64(online)
	switch {
	case sidecarPath(path):
		dAfter, dFileAfter, err := r.nodesRSS()
		if err != nil {
			return res, err
		}
		res.MemPerUserKB = float64(dAfter-dBefore) / 1024 / float64(online)
		res.SidecarFileKBPerUser = float64(dFileAfter-dFileBefore) / 1024 / float64(online)
		if added := online - halfOnline; cfg.MemSlope && halfOnline > 0 && added > 0 {
			res.MemSlopeKBPerUser, res.MemSlopeFrom = float64(dAfter-dHalf)/1024/float64(added), halfOnline
			cfg.Logger.Info("imsidecar memory slope", "path", path, "from", halfOnline, "to", online, "kb_per_added_user", res.MemSlopeKBPerUser)
		}
		for _, d := range r.nodes {
			fds, err := OpenFiles(d.PID())
			if err != nil {
				return res, err
			}
			res.SidecarFDs += fds
		}
		res.SidecarConns = int(r.dialer.dials.Load())
		cfg.Logger.Info("sidecar descriptors", "transport", cfg.Transport, "fds", res.SidecarFDs, "api_conns", res.SidecarConns)
	case path == PathBOSH || path == PathWebSocket:
		res.MemPerUserKB = res.ProsodyMemPerUserKB
	}
	if r.redis != nil {
		if res.Cluster, err = r.clusterAfterLogin(ctx, redis0, online); err != nil {
			return res, err
		}
	}

	stopTrace, err := r.startTrace()
	if err != nil {
		return res, err
	}
	ph, err := r.phase(ctx, 1, cfg.Rate, cfg.Duration)
	stopTrace()
	if err != nil {
		return res, err
	}
	res.Phase = ph
	if ph.Delivered > 0 {
		res.CPUPer1k = ph.cpuPath / (float64(ph.Delivered) / 1000)
		res.ProsodyCPUPer1k = ph.cpuPro / (float64(ph.Delivered) / 1000)
		if r.d != nil {
			res.SidecarCPUPer1k = (ph.cpuPath - ph.cpuPro - ph.cpuRedis) / (float64(ph.Delivered) / 1000)
		}
	}
	if res.Cluster != nil {
		if err := r.clusterAfterPhase(ctx, res.Cluster, ph); err != nil {
			return res, err
		}
	}
	// The knee ladder, independent of how the target phase went: each
	// step starts once the previous one has drained and settled.
	// A step that fails a criterion not yet settled is run once more
	// (Attempt 2), and the rate counts for that criterion if either
	// attempt met it: on a shared machine a neighbour's burst can spoil
	// one short step.
	id, kneeFound := 2, false
ladder:
	for _, rate := range cfg.SweepRates {
		keptUp, held := false, false
		for attempt := 1; attempt <= 2; attempt++ {
			if err := r.quiesce(ctx); err != nil {
				return res, err
			}
			sp, err := r.phase(ctx, id, rate, cfg.SweepTime)
			if err != nil {
				return res, err
			}
			id++
			sp.Attempt = attempt
			res.Sweep = append(res.Sweep, sp)
			keptUp, held = keptUp || sp.KeptUp, held || sp.Held
			if keptUp && (held || kneeFound) {
				break
			}
		}
		switch {
		case !keptUp:
			break ladder // saturated: higher rates only queue
		case !held:
			kneeFound = true
		}
	}
	res.setKnee()
	cfg.Logger.Info("knee", "path", path, "knee", res.KneeRate, "bounded", res.KneeBounded, "stop", res.KneeStop,
		"capacity", res.CapacityRate, "capacity_bounded", res.CapacityBounded, "capacity_stop", res.CapacityStop)
	if res.Cluster != nil {
		fw, err := r.nodesMetric(ctx, "imsidecar_cluster_forwards_total")
		if err != nil {
			return res, err
		}
		res.Cluster.Forwards = int(fw)
	}
	stop()
	r.closeAll(ctx)
	return res, nil
}

// readEvents waits for the event probe's next totals (it rewrites them
// every second, so they hold everything up to the call) and returns them.
func (r *rig) readEvents(ctx context.Context, file string) (map[string]EventStat, error) {
	fi0, _ := os.Stat(file)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if fi, err := os.Stat(file); err == nil && (fi0 == nil || !fi.ModTime().Equal(fi0.ModTime())) {
			return ReadEventStats(file)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("loadtest: no fresh totals in %s from Prosody's event probe", file)
		}
	}
}

// writeEvents writes the per-login event table of res (its LoginEvents
// CPU and instructions are per login already, their counts totals): name, count, self CPU
// and Lua kilo-instructions per login, share of Prosody's CPU per login;
// then what the probe does not see (the event loop, timers, the collector
// outside the rows), the CPU per Lua instruction, and the kernel's side.
func writeEvents(name string, res PathResult) error {
	var b strings.Builder
	n, proMS := float64(max(res.Online, 1)), res.ProsodyLoginCPUms
	fmt.Fprintf(&b, "# %s: %d logins at %.1f/s (%.3f ms each); CPU ms per login: Prosody %.3f, the path's processes %.3f, the generator %.3f, the whole machine %.3f (steal %.3f)\n",
		res.Path, res.Online, res.LoginsPerSec, 1e3/max(res.LoginsPerSec, 1e-9), proMS, res.LoginCPUms, res.GeneratorLoginCPUms, res.MachineLoginCPUms, res.MachineLoginStealms)
	fmt.Fprintf(&b, "# per login: count, self CPU µs, self Lua kinstr, share of Prosody's CPU\n")
	var total, totalK, allK float64
	for _, e := range res.LoginEvents {
		if e.Name == "lua/kinstr" {
			allK = float64(e.Count) / n
			continue
		}
		total += e.SelfSec
		totalK += e.SelfKInstr
		fmt.Fprintf(&b, "%-64s %10.2f %9.1f %8.1f %5.1f%%\n", e.Name, float64(e.Count)/n, e.SelfSec*1e6, e.SelfKInstr, e.SelfSec*1e5/max(proMS, 1e-9))
	}
	fmt.Fprintf(&b, "%-64s %10s %9.1f %8.1f %5.1f%%\n", "(all rows)", "", total*1e6, totalK, total*1e5/max(proMS, 1e-9))
	rest := proMS/1e3 - total
	fmt.Fprintf(&b, "%-64s %10s %9.1f %8.1f %5.1f%%\n", "(the rest: event loop, timers, GC outside the rows)", "", rest*1e6, allK-totalK, rest*1e5/max(proMS, 1e-9))
	if allK > 0 {
		fmt.Fprintf(&b, "# Lua kinstr per login %.1f; Prosody CPU per kinstr %.2f µs (all CPU, C and kernel included, over the Lua work)\n", allK, proMS*1e3/allK)
	}
	if k := res.LoginProsodyKernel; k != nil {
		fmt.Fprintf(&b, "# Prosody's CPU per login: user %.2f ms, system %.2f ms; scheduling: ran %.3f ms, waited runnable for a CPU %.3f ms, context switches voluntary (it blocked, idle) %.2f, involuntary (preempted) %.2f\n",
			k.UserMS, k.SysMS, k.RunMS, k.WaitMS, k.VolCtx, k.InvolCtx)
	}
	if err := os.WriteFile(name, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	return nil
}

// writeSessions writes cfg.PHPSample sessions with the real PHP CLI and
// the rest with EncodeSession, in the same format.
func (r *rig) writeSessions(ctx context.Context, dir string) error {
	now := time.Now()
	r.sids = make([]string, r.cfg.Users)
	var bulk []SessionUser
	for i := range r.cfg.Users {
		r.sids[i] = sessionID(i)
		u := SessionUser{ID: r.sids[i], User: userName(i), Password: password(i)}
		if i < r.cfg.PHPSample {
			if err := WriteSessionPHP(ctx, dir, u, now); err != nil {
				return err
			}
			continue
		}
		bulk = append(bulk, u)
	}
	return WriteSessions(dir, bulk, now)
}

// sessionID is a 32-character PHP-style id, distinct per user.
func sessionID(i int) string {
	s := fmt.Sprintf("lt%030d", i)
	return strings.NewReplacer("0", "a", "1", "b", "2", "c", "3", "d", "4", "e").Replace(s[:12]) + s[12:]
}

// login brings user i online on the rig's path.
func (r *rig) login(ctx, life context.Context, i int) (client, error) {
	onMsg := r.receive
	switch r.path {
	case PathSidecar, PathSidecarTLS:
		return dialSidecar(ctx, life, r.hc, r.d.URL, r.sids[i], onMsg)
	case PathSidecarCluster:
		return dialSidecar(ctx, life, r.hc, r.nodes[i%len(r.nodes)].URL, r.sids[i], onMsg)
	case PathSidecarClusterRR:
		return dialSidecarRR(ctx, life, r.hc, r.nodeURLs(), i, r.sids[i], onMsg)
	case PathBOSH:
		return dialBOSH(ctx, life, r.hc, r.pro.BOSHURL(), nil, userName(i), password(i), "bench", onMsg)
	case PathWebSocket:
		return dialWS(ctx, life, r.hc, r.pro.WebSocketURL(), nil, userName(i), password(i), "bench", onMsg)
	case PathSidecarBOSH:
		return dialBOSH(ctx, life, r.hc, r.d.URL+"/http-bind", sessionCookie(r.sids[i]), userName(i), "not-the-password", "bench", onMsg)
	case PathSidecarWebSocket:
		return dialWS(ctx, life, r.hc, "ws"+strings.TrimPrefix(r.d.URL, "http")+"/xmpp-websocket", sessionCookie(r.sids[i]), userName(i), "not-the-password", "bench", onMsg)
	default:
		return dialBare(ctx, r.pro.Addr, userName(i), password(i), onMsg)
	}
}

// sidecarPath reports whether path runs through imsidecar.
func sidecarPath(path string) bool {
	return path == PathSidecar || path == PathSidecarBOSH || path == PathSidecarWebSocket || path == PathSidecarTLS || clusterPath(path)
}

// sessionCookie is what a browser of the PHP session sends.
func sessionCookie(sid string) http.Header {
	return http.Header{"Cookie": {"sessionid=" + sid}}
}

// loginAll logs users from to to-1 in with cfg.Concurrency logins in
// flight.
func (r *rig) loginAll(ctx, life context.Context, from, to int) (online, errs int, first error) {
	var next atomic.Int64
	next.Store(int64(from))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range min(r.cfg.Concurrency, to-from) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= to || ctx.Err() != nil {
					return
				}
				lctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				c, err := r.login(lctx, life, i)
				cancel()
				mu.Lock()
				if err != nil {
					errs++
					if first == nil {
						first = err
					}
				} else {
					r.clients[i] = c
					online++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return online, errs, first
}

func (r *rig) closeAll(ctx context.Context) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 200)
	for _, c := range r.clients {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_ = c.Close(cctx)
		})
	}
	wg.Wait()
}

// loginSample is what the login storm is measured by, read before and
// after it: the path's and Prosody's CPU seconds, the generator's (this
// process), the machine's busy and stolen time, Prosody's kernel counters.
type loginSample struct {
	cpu, prosody, gen, machine, steal float64
	kernel                            ProcCounters
}

// sampleLogin reads a loginSample; pid is Prosody's.
func (r *rig) sampleLogin(pid int) (s loginSample, err error) {
	if s.cpu, s.prosody, err = r.cpu(); err != nil {
		return s, err
	}
	var err1, err2, err3 error
	s.gen, err1 = CPUSeconds(os.Getpid())
	s.kernel, err2 = ReadProcCounters(pid)
	s.machine, s.steal, err3 = MachineCPUSeconds()
	return s, errors.Join(err1, err2, err3)
}

// cpu returns the CPU seconds of the processes the path uses (Prosody,
// every imsidecar, the cluster's Redis) and of Prosody.
func (r *rig) cpu() (path, prosody float64, err error) {
	prosody, err = CPUSeconds(r.pro.PID())
	if err != nil {
		return 0, 0, err
	}
	path = prosody
	for _, d := range r.nodes {
		c, err := CPUSeconds(d.PID())
		if err != nil {
			return 0, 0, err
		}
		path += c
	}
	if r.redis != nil {
		c, err := CPUSeconds(r.redis.PID())
		if err != nil {
			return 0, 0, err
		}
		path += c
	}
	return path, prosody, nil
}

// nodesRSS is the resident memory of every imsidecar of the path, and
// its file-backed part, summed.
func (r *rig) nodesRSS() (rss, file int64, err error) {
	for _, d := range r.nodes {
		n, err := RSS(d.PID())
		if err != nil {
			return 0, 0, err
		}
		f, err := RSSFile(d.PID())
		if err != nil {
			return 0, 0, err
		}
		rss, file = rss+n, file+f
	}
	return rss, file, nil
}

// Quiet is how idle the path's processes must be before the next phase:
// at most quietShare of one core over quietWindow, for up to quietMax.
const (
	quietWindow = 500 * time.Millisecond
	quietShare  = 0.1
	quietMax    = 30 * time.Second
)

// quiesce waits SweepSettle, then until the processes of the path
// (Prosody, and imsidecar) use at most quietShare of a core over a
// quietWindow: a phase past the path's capacity leaves a queue in the
// server that would otherwise slow the next one down. After quietMax it
// goes on and says so.
func (r *rig) quiesce(ctx context.Context) error {
	start := time.Now()
	time.Sleep(r.cfg.SweepSettle)
	prev, _, err := r.cpu()
	if err != nil {
		return err
	}
	for ctx.Err() == nil {
		time.Sleep(quietWindow)
		cur, _, err := r.cpu()
		if err != nil {
			return err
		}
		if cur-prev <= quietShare*quietWindow.Seconds() {
			if waited := time.Since(start); waited > r.cfg.SweepSettle+2*quietWindow {
				r.cfg.Logger.Info("quiet again", "path", r.path, "seconds", waited.Seconds())
			}
			return nil
		}
		if time.Since(start) > quietMax {
			r.cfg.Logger.Warn("path still busy before the next phase", "path", r.path, "seconds", time.Since(start).Seconds())
			return nil
		}
		prev = cur
	}
	return ctx.Err()
}

// receive is every client's message callback.
func (r *rig) receive(body string) {
	r.phaseMu.Lock()
	t := r.track
	r.phaseMu.Unlock()
	t.received(body)
}

// phase sends messages between random online pairs at rate for d, waits
// for the deliveries (at most 20 s after the last send) and summarises.
// Users whose send failed or whose message was lost in an earlier phase
// take no part: a phase past the path's capacity can leave sessions broken
// (BOSH sessions reset by Prosody), which would otherwise fail the next.
func (r *rig) phase(ctx context.Context, id int, rate float64, d time.Duration) (Phase, error) {
	var live []int
	skipped := 0
	for i, c := range r.clients {
		switch {
		case c == nil:
		case r.broken[i]:
			skipped++
		default:
			live = append(live, i)
		}
	}
	if len(live) < 2 {
		return Phase{}, fmt.Errorf("loadtest: %s: only %d users left whose sends and deliveries work", r.path, len(live))
	}
	total := int(rate * d.Seconds())
	t := newTracker(id, total)
	r.phaseMu.Lock()
	r.track = t
	r.phaseMu.Unlock()

	cpu0, pro0, err := r.cpu()
	if err != nil {
		return Phase{}, err
	}
	redis0, redisCPU0, err := r.redisReading(ctx)
	if err != nil {
		return Phase{}, err
	}
	ph := Phase{TargetRate: rate, UsersSkipped: skipped}
	rng := rand.New(rand.NewPCG(uint64(id), 42))
	sem := make(chan struct{}, 4096) // bound on sends in flight
	var sendErrs atomic.Int64
	var firstSendErr atomic.Pointer[error] // for the log: what failed
	var wg sync.WaitGroup
	t0 := time.Now()
	interval := time.Duration(float64(time.Second) / rate)
	for k := range total {
		if ctx.Err() != nil {
			break
		}
		if wait := time.Until(t0.Add(time.Duration(k) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		ai, bi := rng.IntN(len(live)), rng.IntN(len(live)-1)
		if bi >= ai {
			bi++ // a random pair of two distinct users
		}
		a, b := live[ai], live[bi]
		sem <- struct{}{}
		ph.Sent++
		body := t.body(k)
		from, to := r.clients[a], userName(b)+"@"+Domain
		t.from[k], t.to[k] = int32(a), int32(b)
		t.start[k].Store(time.Now().UnixNano())
		wg.Go(func() {
			defer func() { <-sem }()
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			err := from.Send(sctx, to, body)
			t.sent[k].Store(time.Now().UnixNano())
			if err != nil {
				sendErrs.Add(1)
				firstSendErr.CompareAndSwap(nil, &err)
				t.failed(k)
			}
		})
	}
	sendEnd := time.Now()
	ph.OfferedPerSec = float64(ph.Sent) / max(sendEnd.Sub(t0), d).Seconds()
	wg.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for t.settled.Load() < int64(ph.Sent) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	cpu1, pro1, err := r.cpu()
	if err != nil {
		return Phase{}, err
	}
	ph.cpuPath, ph.cpuPro = cpu1-cpu0, pro1-pro0
	if r.redis != nil {
		redis1, redisCPU1, err := r.redisReading(ctx)
		if err != nil {
			return Phase{}, err
		}
		ph.cpuRedis, ph.redisSecs = redisCPU1-redisCPU0, redis1.at.Sub(redis0.at).Seconds()
		ph.redisCalls, _ = callsSince(redis0.redisStats, redis1.redisStats)
	}
	ph.SendErrors = int(sendErrs.Load())
	if e := firstSendErr.Load(); e != nil {
		r.cfg.Logger.Warn("send failed", "path", r.path, "rate", rate, "send_errors", ph.SendErrors, "first", *e)
	}
	ph.Delivered = int(t.delivered.Load())
	ph.Duplicates = int(t.dups.Load())
	ph.Lost = t.lost(ph.Sent)
	for k := range ph.Sent {
		switch {
		case t.fail[k].Load():
			r.broken[t.from[k]] = true
		case !t.got[k].Load():
			r.broken[t.from[k]], r.broken[t.to[k]] = true, true
		}
	}
	end := time.Unix(0, t.last.Load())
	if end.Before(sendEnd) {
		end = sendEnd
	}
	ph.DeliveredPerSec = float64(ph.Delivered) / end.Sub(t0).Seconds()
	s := t.lat.Summary()
	ph.P50ms, ph.P99ms, ph.Maxms = ms(s.P50), ms(s.P99), ms(s.Max)
	ph.KeptUp, ph.Held, ph.Why = Check(ph)
	r.cfg.Logger.Info("phase", "path", r.path, "rate", rate, "skipped", skipped, "sent", ph.Sent, "delivered", ph.Delivered,
		"lost", ph.Lost, "p50_ms", ph.P50ms, "p99_ms", ph.P99ms, "max_ms", ph.Maxms, "kept_up", ph.KeptUp, "held", ph.Held, "why", ph.Why)
	if r.cfg.LatencyDir != "" {
		name := filepath.Join(r.cfg.LatencyDir, r.path+"-"+strconv.Itoa(id)+".csv")
		if err := t.writeCSV(name); err != nil {
			return ph, err
		}
	}
	return ph, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// tracker matches received bodies with their send times.
type tracker struct {
	id        int
	prefix    string
	start     []atomic.Int64 // send call start, UnixNano, by sequence
	sent      []atomic.Int64 // send call return, UnixNano
	recv      []atomic.Int64 // first delivery, UnixNano
	from, to  []int32        // user indexes, written before the send starts
	got       []atomic.Bool  // delivered (at least once)
	fail      []atomic.Bool  // the send call failed
	done      []atomic.Bool  // delivered or failed: nothing more to wait for
	settled   atomic.Int64   // how many are done
	delivered atomic.Int64
	dups      atomic.Int64
	last      atomic.Int64 // UnixNano of the last delivery
	lat       Latencies
}

func newTracker(id, n int) *tracker {
	return &tracker{id: id, prefix: "lt-" + strconv.Itoa(id) + "-",
		start: make([]atomic.Int64, n), sent: make([]atomic.Int64, n), recv: make([]atomic.Int64, n),
		from: make([]int32, n), to: make([]int32, n), got: make([]atomic.Bool, n), fail: make([]atomic.Bool, n), done: make([]atomic.Bool, n)}
}

func (t *tracker) body(k int) string { return t.prefix + strconv.Itoa(k) }

// failed records that the send call of message k failed: it counts as a
// send error and is not waited for. It may arrive all the same (the call
// timed out after the message went through): it then counts as delivered
// too, not as a duplicate, and never as lost.
func (t *tracker) failed(k int) { t.fail[k].Store(true); t.settle(k) }

// settle marks message k done, once.
func (t *tracker) settle(k int) {
	if !t.done[k].Swap(true) {
		t.settled.Add(1)
	}
}

// lost counts the first n messages whose send call succeeded but that
// never arrived.
func (t *tracker) lost(n int) int {
	lost := 0
	for k := range n {
		if !t.fail[k].Load() && !t.got[k].Load() {
			lost++
		}
	}
	return lost
}

func (t *tracker) received(body string) {
	rest, ok := strings.CutPrefix(body, t.prefix)
	if !ok {
		return // an earlier phase's straggler
	}
	k, err := strconv.Atoi(rest)
	if err != nil || k < 0 || k >= len(t.start) {
		return
	}
	now := time.Now()
	if t.got[k].Swap(true) {
		t.dups.Add(1)
		return
	}
	t.recv[k].Store(now.UnixNano())
	t.lat.Add(now.Sub(time.Unix(0, t.start[k].Load())))
	t.delivered.Add(1)
	t.last.Store(now.UnixNano())
	t.settle(k)
}

// bareClient is an xmppconn stream: what a desktop client holds, and what
// imsidecar holds per user.
type bareClient struct{ c *xmppconn.Conn }

// dialBare logs in with xmppconn as imsidecar does (carbons, XEP-0198).
func dialBare(ctx context.Context, addr, user, pass string, onMsg func(string)) (*bareClient, error) {
	conn, err := xmppconn.Dial(ctx, xmppconn.Config{
		Addr: addr, Domain: Domain, TLS: xmppconn.TLSNone, User: user, Password: pass, Resource: "bench",
		Carbons: true,
		Handler: xmppconn.HandlerFunc(func(ev xmppconn.Event) {
			if m, ok := ev.(*xmppconn.Message); ok && m.Body != "" {
				onMsg(m.Body)
			}
		}),
	})
	if err != nil {
		return nil, fmt.Errorf("loadtest: xmppconn: %w", err)
	}
	return &bareClient{conn}, nil
}

func (b *bareClient) Send(ctx context.Context, to, body string) error {
	_, err := b.c.Send(ctx, xmppconn.Message{To: to, Body: body, Type: "chat"})
	return err
}

func (b *bareClient) Close(ctx context.Context) error { return b.c.Close(ctx) }
