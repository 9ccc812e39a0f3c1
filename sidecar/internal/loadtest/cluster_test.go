package loadtest

import (
	"bytes"
	"context"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseRedisInfo(t *testing.T) {
	text := "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n\r\n# Keyspace\r\ndb0:keys=27,expires=18,avg_ttl=4000\r\n" +
		"db1:keys=5,expires=0,avg_ttl=0\r\n# Commandstats\r\ncmdstat_evalsha:calls=120,usec=900,usec_per_call=7.5,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_pexpire:calls=100,usec=100,usec_per_call=1.0,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_info:calls=7,usec=70,usec_per_call=10.0,rejected_calls=0,failed_calls=0\r\n"
	st, err := parseRedisInfo(text)
	if err != nil {
		t.Fatal(err)
	}
	if st.UsedMemory != 1<<20 || st.Keys != 27 || st.Calls["evalsha"] != 120 || st.Calls["pexpire"] != 100 || len(st.Calls) != 2 {
		t.Fatalf("parsed %+v", st)
	}
	for name, bad := range map[string]string{
		"no used_memory":   "# Memory\r\nused_memory_rss:5\r\n",
		"bad used_memory":  "used_memory:lots\r\n",
		"bad keys":         "used_memory:1\r\ndb0:expires=1\r\n",
		"bad commandstats": "used_memory:1\r\ncmdstat_get:usec=1\r\n",
		"bad calls":        "used_memory:1\r\ncmdstat_get:calls=x\r\n",
	} {
		if _, err := parseRedisInfo(bad); err == nil {
			t.Errorf("%s: parsed %q", name, bad)
		}
	}
	b := redisStats{Calls: map[string]int64{"evalsha": 150, "pexpire": 130, "get": 4, "set": 1}}
	d, total := callsSince(st, b)
	if total != 65 || d["evalsha"] != 30 || d["get"] != 4 || scriptCalls(d) != 30 {
		t.Fatalf("callsSince = %v, %d", d, total)
	}
}

func TestSumMetric(t *testing.T) {
	text := `# HELP imsidecar_cluster_forwards_total Cluster mode: calls forwarded.
# TYPE imsidecar_cluster_forwards_total counter
imsidecar_cluster_forwards_total{result="ok"} 12
imsidecar_cluster_forwards_total{result="not_owner"} 3
imsidecar_cluster_forwards_total_other 100
imsidecar_cluster_leases 333
imsidecar_cluster_leases_lost_total 2
`
	for name, want := range map[string]float64{"imsidecar_cluster_forwards_total": 15, "imsidecar_cluster_leases": 333, "absent": 0} {
		got, err := sumMetric(strings.NewReader(text), name)
		if err != nil || got != want {
			t.Errorf("sumMetric(%s) = %v, %v; want %v", name, got, err, want)
		}
	}
	if _, err := sumMetric(strings.NewReader("imsidecar_cluster_leases NaNo\n"), "imsidecar_cluster_leases"); err == nil {
		t.Error("a malformed value was summed")
	}
}

// TestClusterGoals reads made-up runs against issue 20 item 9's bounds.
func TestClusterGoals(t *testing.T) {
	sc := PathResult{Path: PathSidecar, Online: 1000, MemPerUserKB: 20, Phase: Phase{Delivered: 5000, P50ms: 1, P99ms: 40}}
	cluster := func(p50, p99, mem, redisKB, cmds float64) PathResult {
		return PathResult{Path: PathSidecarCluster, Online: 1000, MemPerUserKB: mem, Phase: Phase{Delivered: 5000, P50ms: p50, P99ms: p99},
			Cluster: &ClusterResult{Nodes: 3, RedisMemPerUserKB: redisKB, RedisCmdsPerMsg: cmds}}
	}
	tests := []struct {
		name  string
		paths []PathResult
		met   []bool // p50, p99, memory, Redis KB, Redis commands; nil: none measured
	}{
		{"all met", []PathResult{sc, cluster(1.9, 47.9, 23.9, 0.5, 1.2)}, []bool{true, true, true, true, true}},
		{"all missed", []PathResult{sc, cluster(2.1, 48.1, 24.1, 8.1, 4.1)}, []bool{false, false, false, false, false}},
		{"no cluster path", []PathResult{sc}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := NewReport("test", ThisMachine(), Config{}, tt.paths)
			var got []Goal
			for _, g := range rep.Goals {
				if strings.Contains(g.Name, "cluster") {
					got = append(got, g)
				}
			}
			if len(got) != 5 {
				t.Fatalf("%d cluster goals: %+v", len(got), got)
			}
			for i, g := range got {
				if tt.met == nil {
					if g.Measured || g.Needs == "" {
						t.Errorf("%s: measured without the paths: %+v", g.Name, g)
					}
					continue
				}
				if !g.Measured || g.Met != tt.met[i] {
					t.Errorf("%s: measured %v met %v, want met %v (%+v)", g.Name, g.Measured, g.Met, tt.met[i], g)
				}
			}
			var b bytes.Buffer
			WriteGoals(&b, rep.Goals)
			if !strings.Contains(b.String(), "| cluster p50, sticky (sidecar-cluster vs sidecar) |") {
				t.Errorf("goals table lacks the cluster rows:\n%s", b.String())
			}
		})
	}
	rep := NewReport("test", ThisMachine(), Config{}, []PathResult{sc, cluster(1.5, 44, 22, 0.5, 1.2)})
	if v := rep.Ratios["sidecar_cluster_p99"]; math.Abs(v-1.1) > 1e-9 {
		t.Errorf("p99 ratio %v, want 1.1", v)
	}
}

// TestRunClusterPaths runs the sidecar path and the cluster paths side by
// side on a handful of users: three real imsidecar nodes in cluster mode
// on 127.0.0.11-13 sharing a real redis-server with an append-only file,
// real Prosody and PHP. Every path logs everyone in and delivers every
// message exactly once; sticky traffic forwards nothing and round robin
// does; the cluster's own columns (Redis memory, keys, commands, idle
// commands) are filled, and the goals of issue 20 item 9 are measured.
func TestRunClusterPaths(t *testing.T) {
	skipShort(t, "Prosody, PHP, Redis and imsidecar")
	bin := buildSidecar(t)
	cfg := Config{Users: 9, Rate: 30, Duration: time.Second, SweepRates: []float64{60}, SweepTime: time.Second,
		PHPSample: 2, SourceAddrs: 3, SidecarBin: bin, Dir: t.TempDir(), Timeout: 4 * time.Minute,
		ClusterLeaseTTL: time.Second, Paths: []string{PathSidecar, PathSidecarCluster, PathSidecarClusterRR}, MemSlope: true}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 {
		t.Fatalf("%d paths measured, want 3", len(res))
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
		if p.SidecarFDs <= 0 || p.MemPerUserKB == 0 {
			t.Errorf("%s: %d descriptors, %v KB/user", p.Path, p.SidecarFDs, p.MemPerUserKB)
		}
		// -mem-slope: the storm in two halves, memory read after each.
		if p.MemSlopeFrom != cfg.Users/2 {
			t.Errorf("%s: memory slope from %d users, want %d", p.Path, p.MemSlopeFrom, cfg.Users/2)
		}
		c := p.Cluster
		if p.Path == PathSidecar {
			if c != nil {
				t.Errorf("sidecar path with cluster figures %+v", c)
			}
			continue
		}
		if c == nil {
			t.Fatalf("%s: no cluster figures", p.Path)
		}
		if c.Nodes != 3 || c.Leases != cfg.Users || c.LeaseTTLSeconds != 1 {
			t.Errorf("%s: %d nodes holding %d leases (want 3 and %d), TTL %v s", p.Path, c.Nodes, c.Leases, cfg.Users, c.LeaseTTLSeconds)
		}
		if sticky := p.Path == PathSidecarCluster; sticky != (c.Forwards == 0) {
			t.Errorf("%s: %d calls forwarded", p.Path, c.Forwards)
		}
		// Each session has at least its lease and its token counter; the
		// renewals (every third of the 1 s TTL) run through the phase.
		if c.RedisKeysPerUser < 2 || c.RedisMemPerUserKB <= 0 || c.RedisIdleCmdsPerSec <= 0 ||
			c.RedisCmdsPerMsg <= 0 || c.RedisScriptsPerMsg <= 0 || c.RedisScriptsPerMsg > c.RedisCmdsPerMsg ||
			c.RedisMsgCmdsPerMsg < 0 || c.RedisMsgCmdsPerMsg > c.RedisCmdsPerMsg || c.RedisCPUPer1k < 0 || len(c.RedisCommands) == 0 ||
			c.RedisIdleScriptsPerSec <= 0 || c.RedisIdleScriptsPerSec > c.RedisIdleCmdsPerSec || c.RedisMsgScriptsPerMsg > c.RedisScriptsPerMsg {
			t.Errorf("%s: cluster figures %+v", p.Path, c)
		}
		// After the phase Redis holds at least what it held after the
		// storm's 2 s settle; each user got messages, which the polls
		// acknowledged: their keys stay in 'dk'.
		if c.RedisMemAfterPerUserKB <= 0 || c.RedisAckedKeysBytesPerUser <= 0 || c.RedisAckedKeysBytesPerUser > 1020 {
			t.Errorf("%s: Redis after the phase %v KB/user, dk %v bytes/user", p.Path, c.RedisMemAfterPerUserKB, c.RedisAckedKeysBytesPerUser)
		}
	}
	rep := NewReport("test", ThisMachine(), cfg, res)
	for _, g := range rep.Goals {
		if strings.Contains(g.Name, "cluster") && !g.Measured {
			t.Errorf("goal %q not measured: needs %s", g.Name, g.Needs)
		}
	}
	for _, k := range []string{"sidecar_cluster_p50", "sidecar_cluster_p99", "sidecar_cluster_mem_per_user", "sidecar_cluster_rr_p99"} {
		if _, ok := rep.Ratios[k]; !ok {
			t.Errorf("no ratio %s: %v", k, rep.Ratios)
		}
	}
	var md strings.Builder
	rep.Markdown(&md)
	for _, want := range []string{"| sidecar-cluster | 9/9 |", "Cluster mode against a single node", "| **sidecar-cluster/sidecar** |",
		"| sidecar-cluster-rr | 3 |", "Redis commands per delivered message by name", "| Redis commands per delivered message (sidecar-cluster) |"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, md.String())
		}
	}
}
