package loadtest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"expressolivre.org/imsidecar/phpsession"
)

// skipShort skips a test that runs real Prosody, PHP or the daemon under
// -short (unit tests only), and only then: without -short a missing binary
// fails it. The starters it guards are in the package's non-test code,
// which the imbench command runs too.
func skipShort(t *testing.T, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("integration test, skipped under -short: it runs a real %s", what)
	}
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		d := make([]time.Duration, len(v))
		for i, x := range v {
			d[i] = time.Duration(x) * time.Millisecond
		}
		return d
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one p50", ms(7), 50, 7 * time.Millisecond},
		{"one p99", ms(7), 99, 7 * time.Millisecond},
		{"two p50 is the lower", ms(1, 2), 50, time.Millisecond},
		{"four p50", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"four p99 is the max", ms(1, 2, 3, 4), 99, 4 * time.Millisecond},
		{"hundred p50", ms(hundred...), 50, 50 * time.Millisecond},
		{"hundred p99", ms(hundred...), 99, 99 * time.Millisecond},
		{"hundred max", ms(hundred...), 100, 100 * time.Millisecond},
		{"tiny p clamps to the min", ms(1, 2, 3), 0.001, time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
}

func TestLatenciesSummaryConcurrent(t *testing.T) {
	var l Latencies
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 250 {
				l.Add(time.Duration(g*250+i+1) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	s := l.Summary()
	if s.N != 1000 || s.P50 != 500*time.Microsecond || s.P99 != 990*time.Microsecond || s.Max != 1000*time.Microsecond {
		t.Fatalf("summary = %+v", s)
	}
}

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name    string
		stat    string
		want    float64
		wantErr bool
	}{
		{"prosody", "4242 (lua5.4) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 50 0 0 20 0 1 0 100 1000 200", 2.0, false},
		{"name with spaces and parens", "7 (a b) c)) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 100 1000 200", 0.03, false},
		{"no parenthesis", "7 a R 1", 0, true},
		{"short", "7 (x) R 1 2 3", 0, true},
		{"not numbers", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 u s 0 0", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.stat))
			if (err != nil) != tt.wantErr || (err == nil && got != tt.want) {
				t.Fatalf("parseStatCPU = %v, %v; want %v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestProcOfSelf(t *testing.T) {
	rss, err := RSS(os.Getpid())
	if err != nil || rss < 1<<20 {
		t.Fatalf("RSS(self) = %d, %v", rss, err)
	}
	if _, err := CPUSeconds(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1e7; i++ { // some CPU time to see
		rss += int64(i & 1)
	}
	c, err := ReadProcCounters(os.Getpid())
	if err != nil || c.RunMS <= 0 || c.UserMS+c.SysMS < 0 {
		t.Fatalf("ReadProcCounters(self) = %+v, %v", c, err)
	}
	if busy, steal, err := MachineCPUSeconds(); err != nil || busy <= 0 || steal < 0 {
		t.Fatalf("MachineCPUSeconds = %v, %v, %v", busy, steal, err)
	}
}

// ourCPUs is every CPU this process may run on.
func ourCPUs(t *testing.T) []int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for c := range 1024 {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

func TestSplitCPUs(t *testing.T) {
	cpus := ourCPUs(t)
	last, want := cpus[len(cpus)-1:], cpus[:len(cpus)-1]
	rest, err := splitCPUs(last)
	if len(want) == 0 { // one CPU: nothing left for the generator
		if err == nil {
			t.Fatalf("splitCPUs(%v) = %v on a one-CPU process", last, rest)
		}
		return
	}
	if err != nil || !slices.Equal(rest, want) {
		t.Fatalf("splitCPUs(%v) = %v, %v; want %v", last, rest, err, want)
	}
}

func TestDialerRefusesNonLoopback(t *testing.T) {
	d := newSourceDialer(3)
	for _, addr := range []string{"192.0.2.1:80", "example.com:80", "[2001:db8::1]:80", "nonsense"} {
		if c, err := d.DialContext(t.Context(), "tcp", addr); err == nil {
			c.Close()
			t.Errorf("dialed %s", addr)
		}
	}
}

// TestSessionMatchesPHP checks that the Go generator writes byte for byte
// what PHP writes for the same user and time, and that the sidecar's own
// reader finds the user and password in both.
func TestSessionMatchesPHP(t *testing.T) {
	skipShort(t, "PHP")
	phpDir, goDir := t.TempDir(), t.TempDir()
	now := time.Unix(1_790_000_000, 0)
	u := SessionUser{ID: sessionID(7), User: "u7", Password: `p"w;|}:{s:1`}
	if err := WriteSessionPHP(t.Context(), phpDir, u, now); err != nil {
		t.Fatal(err)
	}
	if err := WriteSessions(goDir, []SessionUser{u}, now); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(phpDir, "sess_"+u.ID))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(goDir, "sess_"+u.ID))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Go session differs from PHP's:\n go: %q\nphp: %q", got, want)
	}
	r, err := phpsession.Open(t.Context(), phpsession.Config{Store: "files", SavePath: goDir, Serializer: phpsession.SerializerPHP,
		Charset: "ISO-8859-1", Profile: phpsession.ExpressoProfile(100 * 365 * 24 * time.Hour), MaxLifetime: time.Hour, Owner: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s, err := r.Lookup(t.Context(), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if s.Identity.User != u.User || s.Identity.Password != u.Password {
		t.Fatalf("identity = %q/%q, want %q/%q", s.Identity.User, s.Identity.Password, u.User, u.Password)
	}
}

func TestSessionIDs(t *testing.T) {
	seen := map[string]bool{}
	for _, i := range []int{0, 1, 9, 10, 1234, 9999, 10000, 123456} {
		id := sessionID(i)
		if err := phpsession.ValidateID(id, 0); err != nil || len(id) != 32 {
			t.Errorf("sessionID(%d) = %q: %v", i, id, err)
		}
		if seen[id] {
			t.Errorf("sessionID(%d) = %q repeats", i, id)
		}
		seen[id] = true
	}
}

// TestRunEveryPath runs the whole generator on a handful of users against
// real Prosody, the real imsidecar binary and real PHP: every path logs
// everyone in, delivers every message exactly once and reports figures.
func TestRunEveryPath(t *testing.T) {
	skipShort(t, "Prosody, PHP and imsidecar")
	bin := buildSidecar(t)
	cfg := Config{Users: 6, Rate: 30, Duration: time.Second, SweepRates: []float64{60}, SweepTime: time.Second,
		PHPSample: 2, SourceAddrs: 3, SidecarBin: bin, Dir: t.TempDir(), Timeout: 3 * time.Minute}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 4 {
		t.Fatalf("%d paths measured, want 4", len(res))
	}
	for _, p := range res {
		if p.Online != cfg.Users || p.LoginErrors != 0 || p.LoginsPerSec <= 0 {
			t.Errorf("%s: online %d, login errors %d, %v logins/s", p.Path, p.Online, p.LoginErrors, p.LoginsPerSec)
		}
		for _, ph := range append([]Phase{p.Phase}, p.Sweep...) {
			if ph.Sent != int(ph.TargetRate) || ph.Delivered != ph.Sent || ph.Lost != 0 || ph.Duplicates != 0 || ph.SendErrors != 0 {
				t.Errorf("%s at %v/s: sent %d delivered %d lost %d dups %d send errors %d", p.Path, ph.TargetRate,
					ph.Sent, ph.Delivered, ph.Lost, ph.Duplicates, ph.SendErrors)
			}
			if ph.P50ms <= 0 || ph.P99ms < ph.P50ms || ph.Maxms < ph.P99ms {
				t.Errorf("%s: latencies p50 %v p99 %v max %v", p.Path, ph.P50ms, ph.P99ms, ph.Maxms)
			}
		}
		if p.CPUPer1k < 0 {
			t.Errorf("%s: negative CPU", p.Path)
		}
		// The ladder runs whatever the target phase gave (a step that
		// fails is run twice); the knee is read from its steps.
		if n := len(p.Sweep); n < 1 || n > 2 || p.Sweep[0].TargetRate != 60 || p.Sweep[n-1].TargetRate != 60 {
			t.Errorf("%s: ladder steps %+v, want one or two at 60 msg/s", p.Path, p.Sweep)
		}
		want := p
		want.setKnee()
		if p.KneeRate != want.KneeRate || p.KneeStop != want.KneeStop || p.CapacityRate != want.CapacityRate || p.CapacityStop != want.CapacityStop {
			t.Errorf("%s: knee %v %q capacity %v %q; its steps give %v %q, %v %q", p.Path, p.KneeRate, p.KneeStop,
				p.CapacityRate, p.CapacityStop, want.KneeRate, want.KneeStop, want.CapacityRate, want.CapacityStop)
		}
	}
	rep := NewReport("test", ThisMachine(), cfg, res)
	var b bytes.Buffer
	rep.Markdown(&b)
	for _, want := range []string{"| sidecar | 6/6 |", "| bosh | 6/6 |", "| websocket | 6/6 |", "| bare | 6/6 |", "**sidecar/BOSH**", "Login storm"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	out := filepath.Join(t.TempDir(), "results.json")
	if err := rep.WriteJSON(out); err != nil {
		t.Fatal(err)
	}
	if _, ok := rep.Ratios["p99"]; !ok {
		t.Errorf("no sidecar/BOSH p99 ratio: %v", rep.Ratios)
	}
}

// TestRunBrowserPaths runs the sidecar's own BOSH and WebSocket paths (the
// same clients as Prosody's, attached through imsidecar by session cookie)
// beside Prosody's, and checks that nothing is lost and the ratios exist.
func TestRunBrowserPaths(t *testing.T) {
	skipShort(t, "Prosody, PHP and imsidecar")
	bin := buildSidecar(t)
	cfg := Config{Users: 6, Rate: 30, Duration: time.Second, SweepRates: []float64{60}, SweepTime: time.Second,
		PHPSample: 2, SourceAddrs: 3, SidecarBin: bin, Dir: t.TempDir(), Timeout: 3 * time.Minute,
		Paths: []string{PathSidecarBOSH, PathBOSH, PathSidecarWebSocket, PathWebSocket}}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res {
		if p.Online != cfg.Users || p.LoginErrors != 0 {
			t.Errorf("%s: online %d, login errors %d", p.Path, p.Online, p.LoginErrors)
		}
		for _, ph := range append([]Phase{p.Phase}, p.Sweep...) {
			if ph.Sent != int(ph.TargetRate) || ph.Delivered != ph.Sent || ph.Lost != 0 || ph.Duplicates != 0 || ph.SendErrors != 0 {
				t.Errorf("%s at %v/s: sent %d delivered %d lost %d dups %d send errors %d", p.Path, ph.TargetRate,
					ph.Sent, ph.Delivered, ph.Lost, ph.Duplicates, ph.SendErrors)
			}
		}
		if sidecarPath(p.Path) && p.MemPerUserKB == 0 && p.ProsodyMemPerUserKB == 0 {
			t.Errorf("%s: no memory figures", p.Path)
		}
	}
	rep := NewReport("test", ThisMachine(), cfg, res)
	for _, k := range []string{"sidecar_bosh_p99", "sidecar_bosh_mem_per_user_total", "sidecar_websocket_p99"} {
		if _, ok := rep.Ratios[k]; !ok {
			t.Errorf("no ratio %s: %v", k, rep.Ratios)
		}
	}
}

// buildSidecar builds the imsidecar binary of this tree.
func buildSidecar(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "imsidecar")
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	if err := BuildSidecar(t.Context(), filepath.Dir(strings.TrimSpace(string(root))), bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestConfigRejects(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"one user", Config{Users: 1, Rate: 1, Duration: time.Second, Dir: "x", Paths: []string{PathBare}}},
		{"no rate", Config{Users: 2, Duration: time.Second, Dir: "x", Paths: []string{PathBare}}},
		{"unknown path", Config{Users: 2, Rate: 1, Duration: time.Second, Dir: "x", Paths: []string{"xmpp"}}},
		{"sidecar without binary", Config{Users: 2, Rate: 1, Duration: time.Second, Dir: "x", Paths: []string{PathSidecar}}},
		{"cluster without binary", Config{Users: 2, Rate: 1, Duration: time.Second, Dir: "x", Paths: []string{PathSidecarCluster}}},
		{"too many nodes", Config{Users: 2, Rate: 1, Duration: time.Second, Dir: "x", Paths: []string{PathSidecarCluster}, SidecarBin: "x", ClusterNodes: 101}},
		{"no dir", Config{Users: 2, Rate: 1, Duration: time.Second, Paths: []string{PathBare}}},
		{"Prosody on a CPU not ours", Config{Users: 2, Rate: 1, Duration: time.Second, Dir: "x", Paths: []string{PathBare}, ProsodyCPUs: []int{1023}}},
		{"Prosody on a negative CPU", Config{Users: 2, Rate: 1, Duration: time.Second, Dir: "x", Paths: []string{PathBare}, ProsodyCPUs: []int{-1}}},
		{"Prosody on every CPU", Config{Users: 2, Rate: 1, Duration: time.Second, Dir: "x", Paths: []string{PathBare}, ProsodyCPUs: ourCPUs(t)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Run(t.Context(), tt.cfg); err == nil {
				t.Fatal("Run accepted the config")
			}
		})
	}
}

func FuzzParseElement(f *testing.F) {
	for _, s := range []string{
		`<body xmlns="http://jabber.org/protocol/httpbind" sid="x"><message xmlns="jabber:client"><body>hi</body></message></body>`,
		`<failure xmlns="urn:ietf:params:xml:ns:xmpp-sasl"><not-authorized/></failure>`,
		`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>`, ``, `<`, `<a><b></a>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := parseElement(data)
		if err != nil {
			return
		}
		_ = bodyOf(e)
		_ = e.attr("sid")
		if e.XMLName.Local == "failure" {
			_ = saslFailure(e)
		}
	})
}

// TestRunTLSPathAndEvents runs the bare, sidecar and sidecar-tls paths (the
// daemon verifies Prosody's certificate against the run's test CA) with the
// event probe: every path logs everyone in and delivers everything, the
// TLS path has its memory figure and goal, and the probe saw the logins'
// stanzas, SASL and STARTTLS among them.
func TestRunTLSPathAndEvents(t *testing.T) {
	skipShort(t, "Prosody, PHP and imsidecar")
	bin := buildSidecar(t)
	cfg := Config{Users: 6, Rate: 30, Duration: time.Second, PHPSample: 2, SourceAddrs: 3, SidecarBin: bin,
		Dir: t.TempDir(), EventsDir: t.TempDir(), Timeout: 3 * time.Minute,
		Paths: []string{PathBare, PathSidecar, PathSidecarTLS}}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res {
		if p.Online != cfg.Users || p.LoginErrors != 0 || p.Delivered != p.Sent || p.Lost != 0 {
			t.Errorf("%s: online %d, login errors %d, sent %d delivered %d lost %d", p.Path, p.Online, p.LoginErrors, p.Sent, p.Delivered, p.Lost)
		}
		if p.ProsodyLoginCPUms < 0 || p.LoginCPUms < p.ProsodyLoginCPUms {
			t.Errorf("%s: login CPU %v ms, Prosody's %v ms", p.Path, p.LoginCPUms, p.ProsodyLoginCPUms)
		}
		counts := map[string]int64{}
		for _, e := range p.LoginEvents {
			counts[e.Name] = e.Count
		}
		if counts["stanza/urn:ietf:params:xml:ns:xmpp-sasl:auth"] != int64(cfg.Users) {
			t.Errorf("%s: the probe saw %d SASL auths, want %d: %v", p.Path, counts["stanza/urn:ietf:params:xml:ns:xmpp-sasl:auth"], cfg.Users, p.LoginEvents)
		}
		if tls := counts["stanza/urn:ietf:params:xml:ns:xmpp-tls:starttls"]; (p.Path == PathSidecarTLS) != (tls == int64(cfg.Users)) {
			t.Errorf("%s: the probe saw %d STARTTLS", p.Path, tls)
		}
		// One c2s connection and one PLAIN <auth/> per login, Lua
		// counted, and the kernel's side of Prosody sampled.
		for _, row := range []string{"net/c2s-connect", "sasl-mechanism/PLAIN"} {
			if counts[row] != int64(cfg.Users) {
				t.Errorf("%s: the probe's %s = %d, want %d", p.Path, row, counts[row], cfg.Users)
			}
		}
		if counts["lua/kinstr"] <= 0 || counts["net/c2s-read"] < 3*int64(cfg.Users) || counts["net/flush"] < 3*int64(cfg.Users) {
			t.Errorf("%s: the probe saw %d kinstr, %d reads, %d flushes", p.Path, counts["lua/kinstr"], counts["net/c2s-read"], counts["net/flush"])
		}
		if k := p.LoginProsodyKernel; k == nil || k.RunMS <= 0 || p.GeneratorLoginCPUms < 0 || p.MachineLoginCPUms <= 0 {
			t.Errorf("%s: kernel figures %+v, generator %v ms, machine %v ms per login", p.Path, k, p.GeneratorLoginCPUms, p.MachineLoginCPUms)
		}
		if b, err := os.ReadFile(filepath.Join(cfg.EventsDir, p.Path+"-prosody-events.txt")); err != nil || !strings.Contains(string(b), "waited runnable") {
			t.Errorf("events file: %v\n%s", err, b)
		}
	}
	rep := NewReport("test", ThisMachine(), cfg, res)
	if _, ok := rep.Ratios["tls_mem_per_user_vs_clear"]; !ok {
		t.Errorf("no TLS memory ratio: %v", rep.Ratios)
	}
	var md strings.Builder
	rep.Markdown(&md)
	measured := map[string]bool{}
	for _, g := range rep.Goals {
		measured[g.Name] = g.Measured
	}
	if !measured["login storm, sidecar/bare XMPP client"] || !measured["imsidecar memory per user with STARTTLS (sidecar-tls path)"] ||
		!strings.Contains(md.String(), "with STARTTLS") {
		t.Errorf("goals %+v; report:\n%s", rep.Goals, md.String())
	}
}
