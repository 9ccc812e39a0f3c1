package loadtest

import (
	"fmt"
	"io"
	"strconv"
)

// Goal is one target a run is read against: the figure this run measured,
// the bound it must meet, and the verdict. `make bench` prints every goal
// with met or missed (WriteGoals), so a regression shows at a glance, and
// bench/results.json keeps them.
type Goal struct {
	Name string `json:"name"` // what is measured, and on which path
	Unit string `json:"unit"` // of Value and Bound
	// AtMost says Value ≤ Bound meets the goal; otherwise Value ≥ Bound.
	AtMost bool    `json:"at_most"`
	Bound  float64 `json:"bound"`
	// Of names what a relative bound is measured on in the same run
	// ("" for a fixed bound).
	Of    string  `json:"of,omitempty"`
	Value float64 `json:"value"`
	// Measured is false when the run lacked what the goal needs (a path
	// not run, no ladder): the goal is then neither met nor missed.
	Measured bool   `json:"measured"`
	Met      bool   `json:"met"`
	Detail   string `json:"detail,omitempty"` // the figures behind Value and Bound
	// ValueText and BoundText, when set, are how the report shows Value
	// and Bound ("< 100.0": below the ladder's first step).
	ValueText string `json:"value_text,omitempty"`
	BoundText string `json:"bound_text,omitempty"`
	Needs     string `json:"needs,omitempty"` // what an unmeasured goal lacked
}

// measured sets g's value and verdict.
func (g Goal) measured(value, bound float64, detail string) Goal {
	g.Value, g.Bound, g.Measured, g.Detail = value, bound, true, detail
	if g.AtMost {
		g.Met = value <= bound
	} else {
		g.Met = value >= bound
	}
	return g
}

// Goals reads the run against the goals of issue 17 (docs/PERFORMANCE.md
// "Where we stand against the goals"). Each is measured side by side in
// this one run against the same Prosody.
func (r Report) goals() []Goal {
	get := func(name string) *PathResult {
		for i := range r.Paths {
			if r.Paths[i].Path == name {
				return &r.Paths[i]
			}
		}
		return nil
	}
	sc, ws := get(PathSidecar), get(PathWebSocket)
	var goals []Goal

	cpu := Goal{Name: "imsidecar CPU per delivered message (sidecar path, imsidecar only)", Unit: "ms", AtMost: true, Bound: 0.25}
	if sc != nil && sc.Delivered > 0 {
		cpu = cpu.measured(sc.SidecarCPUPer1k, cpu.Bound, "path "+f3(sc.CPUPer1k)+" ms, of which Prosody "+f3(sc.ProsodyCPUPer1k)+" ms")
	} else {
		cpu.Needs = "the sidecar path"
	}
	goals = append(goals, cpu)

	for _, k := range []struct {
		name string
		rate func(p *PathResult) (float64, bool, string)
	}{
		{"sidecar knee ≥ Prosody WebSocket's (p99 ≤ 50 ms)", func(p *PathResult) (float64, bool, string) {
			return p.KneeRate, p.KneeBounded, p.KneeStop
		}},
		{"sidecar capacity ≥ Prosody WebSocket's (kept up)", func(p *PathResult) (float64, bool, string) {
			return p.CapacityRate, p.CapacityBounded, p.CapacityStop
		}},
	} {
		g := Goal{Name: k.name, Unit: "msg/s", Of: "websocket"}
		if sc == nil || ws == nil || len(sc.Sweep) == 0 || len(ws.Sweep) == 0 {
			g.Needs = "the sidecar and websocket paths with a knee ladder"
			goals = append(goals, g)
			continue
		}
		a, ab, as := k.rate(sc)
		b, bb, bs := k.rate(ws)
		g = g.measured(a, b, "stopped by: sidecar "+orDash(as)+"; websocket "+orDash(bs))
		g.ValueText, g.BoundText = limit(*sc, a, ab)+" msg/s", limit(*ws, b, bb)+" msg/s"
		goals = append(goals, g)
	}
	login := Goal{Name: "login storm, sidecar/bare XMPP client", Unit: "×", Bound: 0.95, Of: ""}
	if v, ok := r.Ratios["logins_vs_bare"]; ok {
		from := "Prosody CPU per login sidecar/bare " + f2(r.Ratios["prosody_login_cpu_vs_bare"])
		if k, ok := r.Ratios["prosody_login_kinstr_vs_bare"]; ok {
			from += ", its Lua instructions " + f2(k)
		}
		login = login.measured(v, login.Bound, from)
	} else {
		login.Needs = "the bare and sidecar paths"
	}
	goals = append(goals, login)

	tls := Goal{Name: "imsidecar memory per user with STARTTLS (sidecar-tls path)", Unit: "KB", AtMost: true, Bound: 20}
	if st := get(PathSidecarTLS); st != nil && st.Online > 0 {
		tls = tls.measured(st.MemPerUserKB, tls.Bound, strconv.Itoa(st.Online)+" users online; clear-text sidecar "+f2(sidecarMem(sc))+" KB")
	} else {
		tls.Needs = "the sidecar-tls path"
	}
	goals = append(goals, tls)
	return append(goals, clusterGoals(sc, get(PathSidecarCluster))...)
}

// Issue 20 item 9's bounds on the cost of cluster mode, sticky traffic.
const (
	ClusterP50PlusMs      = 1.0 // cluster p50 ≤ single node's + 1 ms
	ClusterP99Factor      = 1.2 // cluster p99 ≤ 1.2 × single node's
	ClusterMemFactor      = 1.2 // imsidecar KB/user (all nodes) ≤ 1.2 × single node's
	ClusterRedisKBPerUser = 8.0
	ClusterRedisCmdsMsg   = 4.0
)

// clusterGoals reads the cluster path (sticky traffic) against the sidecar
// path of the same run: issue 20 item 9.
func clusterGoals(sc, cl *PathResult) []Goal {
	const needs = "the sidecar and sidecar-cluster paths"
	p50 := Goal{Name: "cluster p50, sticky (sidecar-cluster vs sidecar)", Unit: "ms", AtMost: true, Of: "sidecar"}
	p99 := Goal{Name: "cluster p99, sticky (sidecar-cluster vs sidecar)", Unit: "ms", AtMost: true, Of: "sidecar"}
	mem := Goal{Name: "imsidecar memory per user, cluster (all nodes) vs single node", Unit: "KB", AtMost: true, Of: "sidecar"}
	rkb := Goal{Name: "Redis memory per user (sidecar-cluster)", Unit: "KB", AtMost: true, Bound: ClusterRedisKBPerUser}
	cmd := Goal{Name: "Redis commands per delivered message (sidecar-cluster)", Unit: "cmds/msg", AtMost: true, Bound: ClusterRedisCmdsMsg}
	if cl == nil || cl.Cluster == nil || cl.Delivered == 0 {
		for _, g := range []*Goal{&p50, &p99, &mem, &rkb, &cmd} {
			g.Needs = needs
		}
		return []Goal{p50, p99, mem, rkb, cmd}
	}
	c := cl.Cluster
	rkb = rkb.measured(c.RedisMemPerUserKB, rkb.Bound, f1(c.RedisKeysPerUser)+" keys per user; "+strconv.Itoa(cl.Online)+" users online")
	rkb.ValueText = f2(c.RedisMemPerUserKB) + " KB"
	cmd = cmd.measured(c.RedisCmdsPerMsg, cmd.Bound, "scripts "+f2(c.RedisScriptsPerMsg)+"/msg; idle "+f1(c.RedisIdleCmdsPerSec)+
		" cmds/s (lease renewals); what the messages add "+f2(c.RedisMsgCmdsPerMsg)+"/msg, "+f2(c.RedisMsgScriptsPerMsg)+" scripts")
	cmd.ValueText = f2(c.RedisCmdsPerMsg) + " cmds/msg"
	if sc == nil || sc.Delivered == 0 {
		for _, g := range []*Goal{&p50, &p99, &mem} {
			g.Needs = needs
		}
		return []Goal{p50, p99, mem, rkb, cmd}
	}
	p50 = p50.measured(cl.P50ms, sc.P50ms+ClusterP50PlusMs, "sidecar "+f3(sc.P50ms)+" ms")
	p50.BoundText = "p50 + 1 ms = " + f3(p50.Bound) + " ms"
	p99 = p99.measured(cl.P99ms, sc.P99ms*ClusterP99Factor, "sidecar "+f3(sc.P99ms)+" ms; ratio "+f2(cl.P99ms/max(sc.P99ms, 1e-9)))
	p99.BoundText = "1.2 × p99 = " + f3(p99.Bound) + " ms"
	mem = mem.measured(cl.MemPerUserKB, sc.MemPerUserKB*ClusterMemFactor, strconv.Itoa(c.Nodes)+" nodes; sidecar "+f2(sc.MemPerUserKB)+
		" KB; ratio "+f2(cl.MemPerUserKB/max(sc.MemPerUserKB, 1e-9)))
	mem.ValueText, mem.BoundText = f2(cl.MemPerUserKB)+" KB", "1.2 × "+f2(sc.MemPerUserKB)+" = "+f2(mem.Bound)+" KB"
	return []Goal{p50, p99, mem, rkb, cmd}
}

// sidecarMem is p's memory per user, 0 without the path.
func sidecarMem(p *PathResult) float64 {
	if p == nil {
		return 0
	}
	return p.MemPerUserKB
}

// WriteGoals prints goals as a table: each figure, its bound, met or
// missed, and what lay behind it.
func WriteGoals(w io.Writer, goals []Goal) {
	if len(goals) == 0 {
		return
	}
	fmt.Fprintln(w, "| goal | this run | bound | verdict | from |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, g := range goals {
		cmp := "≥ "
		if g.AtMost {
			cmp = "≤ "
		}
		num := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) + " " + g.Unit }
		boundNum := num(g.Bound)
		if g.BoundText != "" {
			boundNum = g.BoundText
		}
		bound := cmp + boundNum
		if g.Of != "" {
			bound = cmp + g.Of + "'s"
			if g.Measured {
				bound += " (" + boundNum + ")"
			}
		}
		if !g.Measured {
			fmt.Fprintf(w, "| %s | – | %s | not measured | needs %s |\n", g.Name, bound, g.Needs)
			continue
		}
		verdict := "**missed**"
		if g.Met {
			verdict = "met"
		}
		value := num(g.Value)
		switch {
		case g.ValueText != "":
			value = g.ValueText
		case g.Unit == "ms":
			value = f3(g.Value) + " ms"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", g.Name, value, bound, verdict, g.Detail)
	}
}
