package loadtest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Machine describes where a run happened.
type Machine struct {
	NProc     int       `json:"nproc"`
	CPUModel  string    `json:"cpu_model"`
	Kernel    string    `json:"kernel"`
	LoadStart string    `json:"loadavg_start"`
	LoadEnd   string    `json:"loadavg_end"`
	Started   time.Time `json:"started"`
	Seconds   float64   `json:"seconds"`
}

// ThisMachine reads nproc, the CPU model, the kernel and the load average.
func ThisMachine() Machine {
	m := Machine{NProc: runtime.NumCPU(), Started: time.Now().UTC(), LoadStart: loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// Report is what bench/results.json holds.
type Report struct {
	Profile string       `json:"profile"`
	Machine Machine      `json:"machine"`
	Config  ReportConfig `json:"config"`
	Paths   []PathResult `json:"paths"`
	// Ratios are sidecar/BOSH for every figure, and the sidecar's login
	// rate over the bare client's.
	Ratios map[string]float64 `json:"ratios"`
	// Goals is the run read against the issues' goals (goals.go).
	Goals []Goal `json:"goals,omitempty"`
}

// ReportConfig is the part of Config worth recording.
type ReportConfig struct {
	Users       int       `json:"users"`
	Rate        float64   `json:"rate"`
	Seconds     float64   `json:"seconds"`
	SweepRates  []float64 `json:"sweep_rates,omitempty"`
	SweepSecs   float64   `json:"sweep_seconds,omitempty"`
	Concurrency int       `json:"login_concurrency"`
	SourceAddrs int       `json:"source_addrs"`
	PHPSample   int       `json:"php_sample"`
	Transport   string    `json:"sidecar_transport"` // of the sidecar path's HTTP API: http1 or h2c
}

// NewReport assembles a report and computes the ratios.
func NewReport(profile string, m Machine, cfg Config, paths []PathResult) Report {
	m.LoadEnd = loadavg()
	m.Seconds = time.Since(m.Started).Seconds()
	r := Report{Profile: profile, Machine: m, Paths: paths, Ratios: map[string]float64{},
		Config: ReportConfig{Users: cfg.Users, Rate: cfg.Rate, Seconds: cfg.Duration.Seconds(), SweepRates: cfg.SweepRates,
			SweepSecs:   cfg.SweepTime.Seconds(),
			Concurrency: cfg.Concurrency, SourceAddrs: cfg.SourceAddrs, PHPSample: cfg.PHPSample, Transport: cfg.Transport}}
	get := func(name string) *PathResult {
		for i := range paths {
			if paths[i].Path == name {
				return &paths[i]
			}
		}
		return nil
	}
	ratio := func(key string, a, b float64) {
		if b != 0 {
			r.Ratios[key] = a / b
		}
	}
	// The sidecar's own BOSH and WebSocket against Prosody's: memory is
	// the total of the processes each uses (imsidecar + Prosody).
	for _, pair := range [][2]string{{PathSidecarBOSH, PathBOSH}, {PathSidecarWebSocket, PathWebSocket}} {
		if a, b := get(pair[0]), get(pair[1]); a != nil && b != nil {
			key := strings.ReplaceAll(pair[0], "-", "_") + "_"
			ratio(key+"mem_per_user_total", a.MemPerUserKB+a.ProsodyMemPerUserKB, b.MemPerUserKB)
			ratio(key+"p50", a.P50ms, b.P50ms)
			ratio(key+"p99", a.P99ms, b.P99ms)
			ratio(key+"knee_rate", a.KneeRate, b.KneeRate)
			ratio(key+"capacity_rate", a.CapacityRate, b.CapacityRate)
		}
	}
	// Issue 15's goals: p99 against Prosody's WebSocket, total memory
	// against Prosody's BOSH.
	for _, name := range []string{PathSidecarBOSH, PathSidecarWebSocket} {
		key := strings.ReplaceAll(name, "-", "_") + "_"
		if a, ws := get(name), get(PathWebSocket); a != nil && ws != nil {
			ratio(key+"p99_vs_websocket", a.P99ms, ws.P99ms)
		}
		if a, bo := get(name), get(PathBOSH); a != nil && bo != nil {
			ratio(key+"mem_per_user_total_vs_bosh", a.MemPerUserKB+a.ProsodyMemPerUserKB, bo.MemPerUserKB)
		}
	}
	sc, bo, ba := get(PathSidecar), get(PathBOSH), get(PathBare)
	if sc != nil && bo != nil {
		ratio("logins_per_sec", sc.LoginsPerSec, bo.LoginsPerSec)
		ratio("mem_per_user", sc.MemPerUserKB, bo.MemPerUserKB)
		ratio("cpu_per_1k_msgs", sc.CPUPer1k, bo.CPUPer1k)
		ratio("delivered_per_sec", sc.DeliveredPerSec, bo.DeliveredPerSec)
		ratio("p50", sc.P50ms, bo.P50ms)
		ratio("p99", sc.P99ms, bo.P99ms)
		ratio("max", sc.Maxms, bo.Maxms)
		ratio("knee_rate", sc.KneeRate, bo.KneeRate)
		ratio("capacity_rate", sc.CapacityRate, bo.CapacityRate)
	}
	if sc != nil && ba != nil {
		ratio("logins_vs_bare", sc.LoginsPerSec, ba.LoginsPerSec)
		ratio("prosody_login_cpu_vs_bare", sc.ProsodyLoginCPUms, ba.ProsodyLoginCPUms)
		// With the event probe: the Lua work Prosody did per login
		// (instructions, whatever the CPU made of them).
		if a, b := sc.loginKInstr(), ba.loginKInstr(); a > 0 && b > 0 {
			ratio("prosody_login_kinstr_vs_bare", a, b)
		}
	}
	if st := get(PathSidecarTLS); st != nil && sc != nil {
		ratio("tls_mem_per_user_vs_clear", st.MemPerUserKB, sc.MemPerUserKB)
	}
	// Issue 20 item 9: cluster mode against a single node.
	for _, name := range []string{PathSidecarCluster, PathSidecarClusterRR} {
		if cl := get(name); cl != nil && sc != nil {
			key := strings.ReplaceAll(name, "-", "_") + "_"
			ratio(key+"p50", cl.P50ms, sc.P50ms)
			ratio(key+"p99", cl.P99ms, sc.P99ms)
			ratio(key+"mem_per_user", cl.MemPerUserKB, sc.MemPerUserKB)
			if cl.MemSlopeKBPerUser > 0 && sc.MemSlopeKBPerUser > 0 {
				ratio(key+"mem_slope_per_user", cl.MemSlopeKBPerUser, sc.MemSlopeKBPerUser)
			}
			ratio(key+"cpu_per_1k_msgs", cl.CPUPer1k, sc.CPUPer1k)
			ratio(key+"imsidecar_cpu_per_1k_msgs", cl.SidecarCPUPer1k, sc.SidecarCPUPer1k)
			ratio(key+"knee_rate", cl.KneeRate, sc.KneeRate)
			ratio(key+"capacity_rate", cl.CapacityRate, sc.CapacityRate)
		}
	}
	r.Goals = r.goals()
	return r
}

func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
func f2(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }
func f3(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }

// Markdown writes the table: one row per path, then the sidecar/BOSH row.
func (r Report) Markdown(w io.Writer) {
	fmt.Fprintf(w, "%d users, %.0f msg/s for %.0f s (%s profile, sidecar API over %s) on %d × %s, load %s → %s, %.0f s\n\n",
		r.Config.Users, r.Config.Rate, r.Config.Seconds, r.Profile, r.Config.Transport, r.Machine.NProc, r.Machine.CPUModel,
		r.Machine.LoadStart, r.Machine.LoadEnd, r.Machine.Seconds)
	fmt.Fprintln(w, "| path | online | logins/s | login CPU ms (Prosody) | KB/user (path adds) | Prosody KB/user | CPU s/1k msgs | Prosody CPU s/1k | imsidecar CPU s/1k | delivered msg/s | p50 ms | p99 ms | max ms | lost | send errors | knee msg/s (p99 ≤ 50 ms) | capacity msg/s (kept up) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, p := range r.Paths {
		fmt.Fprintf(w, "| %s | %d/%d | %s | %s (%s) | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %s | %s |\n",
			p.Path, p.Online, p.Users, f1(p.LoginsPerSec), f2(p.LoginCPUms), f2(p.ProsodyLoginCPUms), f2(p.MemPerUserKB), f2(p.ProsodyMemPerUserKB),
			f3(p.CPUPer1k), f3(p.ProsodyCPUPer1k), sidecarCPU(p), f1(p.DeliveredPerSec), f2(p.P50ms), f2(p.P99ms), f2(p.Maxms),
			p.Lost, p.SendErrors, limit(p, p.KneeRate, p.KneeBounded), limit(p, p.CapacityRate, p.CapacityBounded))
	}
	if len(r.Ratios) > 0 {
		q := func(k string) string {
			if v, ok := r.Ratios[k]; ok {
				return f2(v)
			}
			return "–"
		}
		fmt.Fprintf(w, "| **sidecar/BOSH** | | %s | | %s | | %s | | | %s | %s | %s | %s | | | %s | %s |\n",
			q("logins_per_sec"), q("mem_per_user"), q("cpu_per_1k_msgs"), q("delivered_per_sec"),
			q("p50"), q("p99"), q("max"), q("knee_rate"), q("capacity_rate"))
		if v, ok := r.Ratios["logins_vs_bare"]; ok {
			fmt.Fprintf(w, "\nLogin storm: sidecar/bare XMPP client = %s; Prosody CPU per login sidecar/bare = %s", f2(v), q("prosody_login_cpu_vs_bare"))
			if k, ok := r.Ratios["prosody_login_kinstr_vs_bare"]; ok {
				fmt.Fprintf(w, ", its Lua instructions per login = %s", f2(k))
			}
			fmt.Fprintln(w, ".")
			for _, p := range r.Paths {
				if k := p.LoginProsodyKernel; k != nil && (p.Path == PathBare || p.Path == PathSidecar) {
					fmt.Fprintf(w, "%s: %.2f ms per login; Prosody ran %.2f ms (user %.2f, system %.2f) and waited %.2f ms for a CPU, idle %.2f times; CPU ms per login of imsidecar %.2f, the generator %.2f, the whole machine %.2f.\n",
						p.Path, 1e3/max(p.LoginsPerSec, 1e-9), k.RunMS, k.UserMS, k.SysMS, k.WaitMS, k.VolCtx, p.LoginCPUms-p.ProsodyLoginCPUms, p.GeneratorLoginCPUms, p.MachineLoginCPUms)
				}
			}
		}
		if v, ok := r.Ratios["tls_mem_per_user_vs_clear"]; ok {
			fmt.Fprintf(w, "\nimsidecar memory per user, STARTTLS/clear = %s.\n", f2(v))
		}
	}
	if len(r.Goals) > 0 {
		fmt.Fprint(w, "\nGoals, this run:\n\n")
		WriteGoals(w, r.Goals)
	}
	r.browserMarkdown(w)
	r.clusterMarkdown(w)
	for _, p := range r.Paths {
		if p.SidecarFDs > 0 {
			fmt.Fprintf(w, "\n%s: imsidecar held %d descriptors with %d users online over %d API connections dialed (%s).\n",
				p.Path, p.SidecarFDs, p.Online, p.SidecarConns, r.Config.Transport)
		}
	}
	if len(r.Config.SweepRates) == 0 {
		return
	}
	rates := make([]string, len(r.Config.SweepRates))
	for i, v := range r.Config.SweepRates {
		rates[i] = strconv.FormatFloat(v, 'f', -1, 64)
	}
	fmt.Fprintf(w, "\nKnee ladder %s msg/s, %.0f s a step: the knee is the highest rate with p99 ≤ %.0f ms before the first that failed, "+
		"the capacity the highest that kept up (nothing lost, ≥ %.0f%% delivered, p50 ≤ %.0f ms).\n\n",
		strings.Join(rates, ", "), r.Config.SweepSecs, KneeP99ms, KneeRateShare*100, KneeP50ms)
	for _, p := range r.Paths {
		fmt.Fprintf(w, "- %s: knee %s (%s); capacity %s (%s)\n", p.Path,
			limit(p, p.KneeRate, p.KneeBounded), orDash(p.KneeStop), limit(p, p.CapacityRate, p.CapacityBounded), orDash(p.CapacityStop))
	}
}

// sidecarCPU renders imsidecar's own CPU per 1,000 messages: "–" on the
// paths that do not run it.
func sidecarCPU(p PathResult) string {
	if !sidecarPath(p.Path) {
		return "–"
	}
	return f3(p.SidecarCPUPer1k)
}

// limit renders a path's knee or capacity: "–" without a ladder, "≥ R"
// when every step met the criterion, "< R" when even the first failed.
func limit(p PathResult, rate float64, bounded bool) string {
	switch {
	case len(p.Sweep) == 0:
		return "–"
	case !bounded:
		return "≥ " + f1(rate)
	case rate == 0:
		return "< " + f1(p.Sweep[0].TargetRate)
	}
	return f1(rate)
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

// WriteJSON writes the report, indented, to name.
func (r Report) WriteJSON(name string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	if err := os.WriteFile(name, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	return nil
}

// browserMarkdown writes the sidecar's BOSH and WebSocket against
// Prosody's, and issue 15's goals, when the run has those paths.
func (r Report) browserMarkdown(w io.Writer) {
	get := func(name string) *PathResult {
		for i := range r.Paths {
			if r.Paths[i].Path == name {
				return &r.Paths[i]
			}
		}
		return nil
	}
	q := func(k string) string {
		if v, ok := r.Ratios[k]; ok {
			return f2(v)
		}
		return "–"
	}
	header := false
	for _, pair := range [][2]string{{PathSidecarBOSH, PathBOSH}, {PathSidecarWebSocket, PathWebSocket}} {
		a, b := get(pair[0]), get(pair[1])
		if a == nil || b == nil {
			continue
		}
		if !header {
			fmt.Fprintln(w, "\nBrowser clients through imsidecar against Prosody's own, same run (memory: the total of imsidecar and Prosody per online user):")
			fmt.Fprintln(w)
			fmt.Fprintln(w, "| path / baseline | total KB/user | memory | p50 | p99 | knee | capacity |")
			fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
			header = true
		}
		key := strings.ReplaceAll(pair[0], "-", "_") + "_"
		fmt.Fprintf(w, "| %s / %s | %s / %s | %s | %s | %s | %s | %s |\n", pair[0], pair[1],
			f1(a.MemPerUserKB+a.ProsodyMemPerUserKB), f1(b.MemPerUserKB), q(key+"mem_per_user_total"),
			q(key+"p50"), q(key+"p99"), kneeRatio(*a, *b, a.KneeRate, b.KneeRate, a.KneeBounded, b.KneeBounded),
			kneeRatio(*a, *b, a.CapacityRate, b.CapacityRate, a.CapacityBounded, b.CapacityBounded))
	}
	sb, bo := get(PathSidecarBOSH), get(PathBOSH)
	if sb == nil || bo == nil {
		return
	}
	fmt.Fprintf(w, "\nIssue 15 goals: knee sidecar-bosh/bosh %s (≥ 3); p99 at %.0f msg/s against Prosody's WebSocket: sidecar-bosh %s, sidecar-websocket %s (≤ 1); "+
		"total memory per user against Prosody's BOSH: sidecar-bosh %s, sidecar-websocket %s (≤ 1.5).\n",
		kneeRatio(*sb, *bo, sb.KneeRate, bo.KneeRate, sb.KneeBounded, bo.KneeBounded), r.Config.Rate,
		q("sidecar_bosh_p99_vs_websocket"), q("sidecar_websocket_p99_vs_websocket"),
		q("sidecar_bosh_mem_per_user_total_vs_bosh"), q("sidecar_websocket_mem_per_user_total_vs_bosh"))
}

// kneeRatio renders a/b of two knees (or capacities): "> x" when b lies
// below the ladder's first step and a does not (x = a over that step),
// "≥ x" when a never failed, "–" when it cannot be told.
func kneeRatio(a, b PathResult, ra, rb float64, boundedA, boundedB bool) string {
	if len(a.Sweep) == 0 || len(b.Sweep) == 0 {
		return "–"
	}
	switch {
	case rb == 0 && ra > 0:
		return "> " + f2(ra/b.Sweep[0].TargetRate)
	case rb == 0 || ra == 0:
		return "–"
	case !boundedA && boundedB:
		return "≥ " + f2(ra/rb)
	case !boundedB:
		return "–" // b's own limit lies past the ladder
	}
	return f2(ra / rb)
}

// clusterMarkdown writes the cluster paths against the single node of the
// same run (issue 20 item 9), when the run has them.
func (r Report) clusterMarkdown(w io.Writer) {
	var sc *PathResult
	for i := range r.Paths {
		if r.Paths[i].Path == PathSidecar {
			sc = &r.Paths[i]
		}
	}
	header := false
	for _, p := range r.Paths {
		c := p.Cluster
		if c == nil {
			continue
		}
		if !header {
			fmt.Fprintln(w, "\nCluster mode against a single node, same run (imsidecar KB/user: all nodes together, and in brackets its file-backed part, the binary's pages touched for the first time, a one-off per process; CPU: the nodes', and Redis's apart; "+
				"Redis commands: every command it ran during the target phase per delivered message, a script's own commands included, and the scripts among them):")
			fmt.Fprintln(w)
			fmt.Fprintln(w, "| path | nodes | p50 ms | p99 ms | imsidecar KB/user (file-backed) | imsidecar CPU s/1k | Redis KB/user | Redis keys/user | Redis cmds/msg (scripts) | Redis idle cmds/s (scripts) | Redis cmds/msg beyond idle (scripts) | Redis CPU s/1k | leases | forwards | knee msg/s |")
			fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
			if sc != nil {
				fmt.Fprintf(w, "| sidecar | 1 | %s | %s | %s (%s) | %s | – | – | – | – | – | – | – | – | %s |\n",
					f2(sc.P50ms), f2(sc.P99ms), f2(sc.MemPerUserKB), f2(sc.SidecarFileKBPerUser), f3(sc.SidecarCPUPer1k), limit(*sc, sc.KneeRate, sc.KneeBounded))
			}
			header = true
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s (%s) | %s | %s | %s | %s (%s) | %s (%s) | %s (%s) | %s | %d | %d | %s |\n",
			p.Path, c.Nodes, f2(p.P50ms), f2(p.P99ms), f2(p.MemPerUserKB), f2(p.SidecarFileKBPerUser), f3(p.SidecarCPUPer1k), f2(c.RedisMemPerUserKB), f1(c.RedisKeysPerUser),
			f2(c.RedisCmdsPerMsg), f2(c.RedisScriptsPerMsg), f1(c.RedisIdleCmdsPerSec), f1(c.RedisIdleScriptsPerSec), f2(c.RedisMsgCmdsPerMsg), f2(c.RedisMsgScriptsPerMsg), f3(c.RedisCPUPer1k),
			c.Leases, c.Forwards, limit(p, p.KneeRate, p.KneeBounded))
		if sc != nil {
			key := strings.ReplaceAll(p.Path, "-", "_") + "_"
			fmt.Fprintf(w, "| **%s/sidecar** | | %s | %s | %s | %s | | | | | | | | | %s |\n", p.Path,
				r.ratioText(key+"p50"), r.ratioText(key+"p99"), r.ratioText(key+"mem_per_user"), r.ratioText(key+"imsidecar_cpu_per_1k_msgs"),
				kneeRatio(p, *sc, p.KneeRate, sc.KneeRate, p.KneeBounded, sc.KneeBounded))
		}
	}
	for _, p := range r.Paths {
		if c := p.Cluster; c != nil && c.RedisMemAfterPerUserKB != 0 {
			fmt.Fprintf(w, "\n%s: Redis KB per user after the target phase %s (after the login storm %s), of which the acknowledged dedup keys (meta 'dk') %s bytes\n",
				p.Path, f2(c.RedisMemAfterPerUserKB), f2(c.RedisMemPerUserKB), f1(c.RedisAckedKeysBytesPerUser))
		}
	}
	for _, p := range r.Paths {
		if p.Cluster != nil && p.MemSlopeKBPerUser > 0 && sc != nil && sc.MemSlopeKBPerUser > 0 {
			key := strings.ReplaceAll(p.Path, "-", "_") + "_"
			fmt.Fprintf(w, "\n%s: imsidecar KB per user added from %d to %d users online (-mem-slope; each process's one-offs left out) %s against sidecar's %s (from %d to %d): %s\n",
				p.Path, p.MemSlopeFrom, p.Online, f2(p.MemSlopeKBPerUser), f2(sc.MemSlopeKBPerUser), sc.MemSlopeFrom, sc.Online, r.ratioText(key+"mem_slope_per_user"))
		}
	}
	for _, p := range r.Paths {
		if c := p.Cluster; c != nil && len(c.RedisCommands) > 0 {
			names := make([]string, 0, len(c.RedisCommands))
			for n := range c.RedisCommands {
				names = append(names, n)
			}
			slices.SortFunc(names, func(a, b string) int { return cmp.Compare(c.RedisCommands[b], c.RedisCommands[a]) })
			parts := make([]string, len(names))
			for i, n := range names {
				parts[i] = n + " " + f2(c.RedisCommands[n])
			}
			fmt.Fprintf(w, "\n%s: Redis commands per delivered message by name (lease TTL %.0f s): %s.\n", p.Path, c.LeaseTTLSeconds, strings.Join(parts, ", "))
		}
	}
}

// ratioText renders one of the report's ratios, "–" when absent.
func (r Report) ratioText(key string) string {
	if v, ok := r.Ratios[key]; ok {
		return f2(v)
	}
	return "–"
}
