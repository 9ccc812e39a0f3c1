package loadtest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// step is a phase at rate that held unless changed.
func step(rate float64, change func(*Phase)) Phase {
	ph := Phase{TargetRate: rate, OfferedPerSec: rate, Sent: int(rate) * 3, Delivered: int(rate) * 3,
		DeliveredPerSec: rate * 0.99, P50ms: 0.5, P99ms: 10, Maxms: 20}
	if change != nil {
		change(&ph)
	}
	return ph
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name       string
		ph         Phase
		wantKeptUp bool
		wantHeld   bool
		wantWhy    string
	}{
		{"keeps up", step(500, nil), true, true, ""},
		{"p99 at the limit holds", step(500, func(p *Phase) { p.P99ms = 50 }), true, true, ""},
		{"p99 past the limit keeps up", step(500, func(p *Phase) { p.P99ms = 50.1 }), true, false, "p99 50.1 ms > 50.0 ms"},
		{"a queue builds up", step(500, func(p *Phase) { p.P50ms, p.P99ms = 70, 900 }), false, false, "p50 70.0 ms > 50.0 ms"},
		{"one lost", step(500, func(p *Phase) { p.Lost, p.Delivered = 1, p.Delivered-1 }), false, false, "1 lost"},
		{"send errors", step(500, func(p *Phase) { p.SendErrors = 3 }), false, false, "3 send errors"},
		{"delivered clearly below", step(500, func(p *Phase) { p.DeliveredPerSec = 449 }), false, false, "delivered 449.0 msg/s"},
		{"delivered just below holds", step(500, func(p *Phase) { p.DeliveredPerSec = 451 }), true, true, ""},
		{"generator fell behind", step(500, func(p *Phase) { p.OfferedPerSec = 300 }), false, false, "offered 300.0 msg/s"},
		{"nothing sent", Phase{TargetRate: 100}, false, false, "nothing sent"},
		{"loss outranks latency", step(500, func(p *Phase) { p.Lost, p.P99ms = 2, 900 }), false, false, "2 lost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keptUp, held, why := Check(tt.ph)
			if keptUp != tt.wantKeptUp || held != tt.wantHeld || why != tt.wantWhy {
				t.Errorf("Check = %v, %v, %q; want %v, %v, %q", keptUp, held, why, tt.wantKeptUp, tt.wantHeld, tt.wantWhy)
			}
		})
	}
}

func TestKnee(t *testing.T) {
	slow := func(p *Phase) { p.P99ms = 80 }
	queued := func(p *Phase) { p.P50ms, p.P99ms, p.DeliveredPerSec = 900, 2000, p.TargetRate*0.7 }
	tests := []struct {
		name              string
		steps             []Phase
		wantKnee, wantCap Limit
	}{
		{"no ladder", nil, Limit{}, Limit{}},
		{"every step held", []Phase{step(100, nil), step(200, nil), step(300, nil)},
			Limit{Rate: 300}, Limit{Rate: 300}},
		{"first step past p99, then saturated", []Phase{step(100, slow), step(200, slow), step(300, queued)},
			Limit{Bounded: true, Stop: "p99 80.0 ms > 50.0 ms at 100.0 msg/s"},
			Limit{Rate: 200, Bounded: true, Stop: "delivered 210.0 msg/s at 300.0 msg/s"}},
		{"knee below the failing step", []Phase{step(100, nil), step(200, nil), step(300, slow)},
			Limit{Rate: 200, Bounded: true, Stop: "p99 80.0 ms > 50.0 ms at 300.0 msg/s"}, Limit{Rate: 300}},
		{"a loss stops both", []Phase{step(100, nil), step(200, func(p *Phase) { p.Lost = 1 })},
			Limit{Rate: 100, Bounded: true, Stop: "1 lost at 200.0 msg/s"},
			Limit{Rate: 100, Bounded: true, Stop: "1 lost at 200.0 msg/s"}},
		{"a step that holds after a failure does not count", []Phase{step(100, nil), step(200, slow), step(300, nil), step(500, queued)},
			Limit{Rate: 100, Bounded: true, Stop: "p99 80.0 ms > 50.0 ms at 200.0 msg/s"},
			Limit{Rate: 300, Bounded: true, Stop: "delivered 350.0 msg/s at 500.0 msg/s"}},
		{"a repeat that holds rescues the rate", []Phase{step(100, nil), step(200, slow), step(200, nil), step(300, nil)},
			Limit{Rate: 300}, Limit{Rate: 300}},
		{"both attempts past p99", []Phase{step(100, nil), step(200, slow), step(200, func(p *Phase) { p.P99ms = 90 })},
			Limit{Rate: 100, Bounded: true, Stop: "p99 90.0 ms > 50.0 ms at 200.0 msg/s"}, Limit{Rate: 200}},
		{"a repeat that keeps up rescues the capacity", []Phase{step(100, slow), step(100, slow), step(200, queued), step(200, slow), step(300, queued), step(300, queued)},
			Limit{Bounded: true, Stop: "p99 80.0 ms > 50.0 ms at 100.0 msg/s"},
			Limit{Rate: 200, Bounded: true, Stop: "delivered 210.0 msg/s at 300.0 msg/s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			knee, capacity := Knee(tt.steps)
			if knee != tt.wantKnee || capacity != tt.wantCap {
				t.Errorf("Knee = %+v, %+v; want %+v, %+v", knee, capacity, tt.wantKnee, tt.wantCap)
			}
		})
	}
}

func TestConfigSortsLadder(t *testing.T) {
	cfg := Config{Users: 2, Rate: 1, Duration: 1, Dir: "x", Paths: []string{PathBare}, SweepRates: []float64{500, 100, 300, 100}}
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	if got := cfg.SweepRates; len(got) != 3 || got[0] != 100 || got[1] != 300 || got[2] != 500 {
		t.Fatalf("ladder = %v, want [100 300 500]", got)
	}
	cfg.SweepRates = []float64{100, -5}
	if err := cfg.defaults(); err == nil {
		t.Fatal("a negative sweep rate was accepted")
	}
}

// TestReportKnee checks the knee and capacity columns, their reasons
// and the sidecar/BOSH ratios in the table and the ratios.
func TestReportKnee(t *testing.T) {
	path := func(name string, steps ...Phase) PathResult {
		p := PathResult{Path: name, Users: 10, Online: 10, Phase: step(500, nil), Sweep: steps}
		p.setKnee()
		return p
	}
	slow := func(p *Phase) { p.P99ms = 80 }
	queued := func(p *Phase) { p.P50ms, p.P99ms, p.DeliveredPerSec = 900, 2000, p.TargetRate*0.7 }
	paths := []PathResult{
		path(PathBare),
		path(PathSidecar, step(100, nil), step(200, nil), step(300, nil), step(500, nil), step(750, slow), step(1000, queued)),
		path(PathBOSH, step(100, nil), step(200, slow), step(300, queued)),
		path(PathWebSocket, step(100, nil), step(200, nil)),
	}
	paths[1].CPUPer1k, paths[1].ProsodyCPUPer1k, paths[1].SidecarCPUPer1k = 0.9, 0.7, 0.2
	cfg := Config{Users: 10, Rate: 500, SweepRates: []float64{100, 200, 300, 500, 750, 1000}, SweepTime: 3e9}
	rep := NewReport("test", ThisMachine(), cfg, paths)
	if got := rep.Ratios["knee_rate"]; got != 5 {
		t.Errorf("knee ratio = %v, want 5", got)
	}
	if got := rep.Ratios["capacity_rate"]; got != 3.75 {
		t.Errorf("capacity ratio = %v, want 3.75", got)
	}
	var b bytes.Buffer
	rep.Markdown(&b)
	for _, want := range []string{
		"| bare | 10/10 |", "| – | – |\n", // no ladder
		"| 500.0 | 750.0 |\n",     // sidecar
		"| 100.0 | 200.0 |\n",     // BOSH
		"| ≥ 200.0 | ≥ 200.0 |\n", // WebSocket never failed
		"| 5.00 | 3.75 |\n",       // the ratio row
		"Knee ladder 100, 200, 300, 500, 750, 1000 msg/s, 3 s a step",
		"- sidecar: knee 500.0 (p99 80.0 ms > 50.0 ms at 750.0 msg/s); capacity 750.0 (delivered 700.0 msg/s at 1000.0 msg/s)",
		"- websocket: knee ≥ 200.0 (–); capacity ≥ 200.0 (–)",
		"| 0.900 | 0.700 | 0.200 | 495.0 |", // imsidecar's own CPU column
		"| 0.000 | 0.000 | – | 495.0 |",     // none on Prosody's paths
		"| imsidecar CPU per delivered message (sidecar path, imsidecar only) | 0.200 ms | ≤ 0.25 ms | met | path 0.900 ms, of which Prosody 0.700 ms |",
		"| sidecar knee ≥ Prosody WebSocket's (p99 ≤ 50 ms) | 500.0 msg/s | ≥ websocket's (≥ 200.0 msg/s) | met | stopped by: sidecar p99 80.0 ms > 50.0 ms at 750.0 msg/s; websocket – |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	// Without the WebSocket path the knee goals are not measured, and a
	// sidecar over its CPU bound misses.
	paths[1].SidecarCPUPer1k = 0.3
	rep = NewReport("test", ThisMachine(), cfg, paths[:3])
	b.Reset()
	rep.Markdown(&b)
	for _, want := range []string{
		"| 0.300 ms | ≤ 0.25 ms | **missed** |",
		"| sidecar capacity ≥ Prosody WebSocket's (kept up) | – | ≥ websocket's | not measured | needs the sidecar and websocket paths with a knee ladder |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("goals lack %q:\n%s", want, b.String())
		}
	}
	if g := rep.Goals[0]; !g.Measured || g.Met || g.Value != 0.3 {
		t.Errorf("CPU goal = %+v", g)
	}
	first := path(PathBOSH, step(100, slow))
	if got := limit(first, first.KneeRate, first.KneeBounded); got != "< 100.0" {
		t.Errorf("knee when the first step fails = %q", got)
	}
}

// TestLagProbeLoads starts a real Prosody with the loop-lag probe and an
// extra setting, and waits for the probe's log: Prosody accepted both
// configuration lines and loaded the module.
func TestLagProbeLoads(t *testing.T) {
	skipShort(t, "Prosody")
	dir := t.TempDir()
	logFile := filepath.Join(dir, "lag.log")
	probe, err := LagProbe(dir, logFile)
	if err != nil {
		t.Fatal(err)
	}
	pro, err := NewProsody(dir, append(probe, `network_settings = { nagle = false }`)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := pro.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer pro.Stop()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		b, _ := os.ReadFile(logFile)
		if strings.HasPrefix(string(b), "unix_s lag_ms cpu_ms") {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(pro.LogFile)
			t.Fatalf("no probe log after 20 s; Prosody's log:\n%s", log)
		}
	}
	cfg, err := os.ReadFile(pro.cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	if i, j := strings.Index(string(cfg), "nagle = false"), strings.Index(string(cfg), "VirtualHost"); i < 0 || i > j {
		t.Errorf("the extra line is not in the global section:\n%s", cfg)
	}
}

// TestReportBrowserPaths checks the table of the sidecar's BOSH and
// WebSocket against Prosody's and issue 15's goal line: memory is the
// total of imsidecar and Prosody, a knee below the ladder's first step
// gives a lower bound.
func TestReportBrowserPaths(t *testing.T) {
	slow := func(p *Phase) { p.P99ms = 80 }
	path := func(name string, mem, pro, p99 float64, steps ...Phase) PathResult {
		p := PathResult{Path: name, Users: 10, Online: 10, MemPerUserKB: mem, ProsodyMemPerUserKB: pro, Phase: step(500, nil), Sweep: steps}
		p.P99ms = p99
		p.setKnee()
		return p
	}
	paths := []PathResult{
		path(PathSidecarBOSH, 25, 50, 30, step(100, nil), step(200, nil), step(300, nil), step(500, slow)),
		path(PathBOSH, 50, 50, 600, step(100, slow)),
		path(PathSidecarWebSocket, 20, 50, 40, step(100, nil), step(200, slow)),
		path(PathWebSocket, 40, 40, 50, step(100, nil), step(200, slow)),
	}
	cfg := Config{Users: 10, Rate: 500, SweepRates: []float64{100, 200, 300, 500}, SweepTime: 3e9}
	rep := NewReport("test", ThisMachine(), cfg, paths)
	var b bytes.Buffer
	rep.Markdown(&b)
	for _, want := range []string{
		"| sidecar-bosh / bosh | 75.0 / 50.0 | 1.50 | 1.00 | 0.05 | > 3.00 | – |\n",
		"| sidecar-websocket / websocket | 70.0 / 40.0 | 1.75 | 1.00 | 0.80 | 1.00 | – |\n",
		"Issue 15 goals: knee sidecar-bosh/bosh > 3.00 (≥ 3); p99 at 500 msg/s against Prosody's WebSocket: sidecar-bosh 0.60, sidecar-websocket 0.80 (≤ 1); " +
			"total memory per user against Prosody's BOSH: sidecar-bosh 1.50, sidecar-websocket 1.40 (≤ 1.5).",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, b.String())
		}
	}
}
