package loadtest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The cluster paths run the sidecar path's users, rate and measurement
// through several imsidecar nodes in cluster mode (docs/CLUSTER.md): one
// private redis-server with an append-only file, each node on its own
// loopback address (127.0.0.11, .12, …) with its API, ops and peer
// listeners, the same secret file, and the same PHP session files and
// Prosody as a single node would use, so the difference from the sidecar
// path is cluster mode alone.
const clusterHostBase = 11

// startCluster starts Redis and cfg.ClusterNodes nodes for the rig.
func (r *rig) startCluster(ctx context.Context, dir, sessDir string, xmppTLS []string) error {
	red, err := startRedis(ctx, filepath.Join(dir, "redis"))
	if err != nil {
		return err
	}
	r.redis = red
	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	secretFile := filepath.Join(dir, "cluster-secret")
	if err := os.WriteFile(secretFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	for i := range r.cfg.ClusterNodes {
		ports, err := freePorts(1)
		if err != nil {
			return err
		}
		host := "127.0.0." + strconv.Itoa(clusterHostBase+i)
		flags := append([]string{
			"--cluster-redis=" + red.URL(),
			"--cluster-node-id=node" + strconv.Itoa(i),
			"--cluster-peer-listen=" + net.JoinHostPort(host, strconv.Itoa(ports[0])),
			"--cluster-secret-file=" + secretFile,
		}, xmppTLS...)
		if r.cfg.ClusterLeaseTTL > 0 {
			flags = append(flags, "--cluster-lease-ttl="+r.cfg.ClusterLeaseTTL.String())
		}
		nodeDir := filepath.Join(dir, "node"+strconv.Itoa(i))
		if err := os.MkdirAll(nodeDir, 0o700); err != nil {
			return fmt.Errorf("loadtest: %w", err)
		}
		d, err := startDaemonOn(ctx, host, r.cfg.SidecarBin, r.cfg.SidecarEnv, nodeDir, sessDir, r.pro, flags...)
		if err != nil {
			return fmt.Errorf("loadtest: cluster node %d: %w", i, err)
		}
		r.nodes = append(r.nodes, d)
	}
	r.d = r.nodes[0]
	return nil
}

// clusterPath reports whether path runs imsidecar in cluster mode.
func clusterPath(path string) bool { return path == PathSidecarCluster || path == PathSidecarClusterRR }

// nodeURLs are the API bases of the rig's nodes.
func (r *rig) nodeURLs() []string {
	urls := make([]string, len(r.nodes))
	for i, d := range r.nodes {
		urls[i] = d.URL
	}
	return urls
}

// nodesMetric sums one metric (every series of it) over the rig's nodes.
func (r *rig) nodesMetric(ctx context.Context, name string) (float64, error) {
	var sum float64
	for _, d := range r.nodes {
		v, err := scrapeMetric(ctx, d.OpsURL+"/metrics", name)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

// scrapeMetric sums every series of the metric name in a Prometheus text
// exposition.
func scrapeMetric(ctx context.Context, url, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fmt.Errorf("loadtest: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("loadtest: metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("loadtest: %s: HTTP %d", url, resp.StatusCode)
	}
	return sumMetric(resp.Body, name)
}

// sumMetric sums every series of the metric name in a Prometheus text
// exposition read from r.
func sumMetric(r io.Reader, name string) (float64, error) {
	var sum float64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("loadtest: metrics line %q: %w", line, err)
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("loadtest: metrics: %w", err)
	}
	return sum, nil
}

// redisIdle measures the commands Redis runs per second with every user
// online and no message sent: the lease renewals, which grow with the
// sessions and the lease TTL, not with the traffic. The window is two
// lease TTLs (each node renews all its leases every third of one), so it
// holds six or seven renewal rounds.
func (r *rig) redisIdle(ctx context.Context) (cmds, scripts float64, err error) {
	ttl := r.cfg.ClusterLeaseTTL
	if ttl <= 0 {
		ttl = defaultLeaseTTL
	}
	a, err := r.redis.stats(ctx)
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	select {
	case <-time.After(2 * ttl):
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	b, err := r.redis.stats(ctx)
	if err != nil {
		return 0, 0, err
	}
	calls, n := callsSince(a, b)
	secs := time.Since(t0).Seconds()
	return float64(n) / secs, float64(scriptCalls(calls)) / secs, nil
}

// defaultLeaseTTL is imsidecar's --cluster-lease-ttl default.
const defaultLeaseTTL = 5 * time.Second

// ClusterResult is what a cluster path measures besides a single node's
// figures (its PathResult holds those: MemPerUserKB is then the sum over
// the nodes, CPUPer1k includes Redis, SidecarCPUPer1k is the nodes').
type ClusterResult struct {
	Nodes           int     `json:"nodes"`
	LeaseTTLSeconds float64 `json:"lease_ttl_s"`
	// Leases is the sessions the nodes held after the login storm, summed
	// (one per online user); Forwards the calls a node forwarded to another
	// over the run (0 on sticky traffic).
	Leases   int `json:"leases"`
	Forwards int `json:"forwards"`
	// RedisMemPerUserKB is Redis's used_memory growth over the login storm
	// per online user (its data, and its clients' buffers: the nodes'
	// connection pools grow with the storm); RedisKeysPerUser its keys per
	// online user.
	RedisMemPerUserKB float64 `json:"redis_mem_per_user_kb"`
	RedisKeysPerUser  float64 `json:"redis_keys_per_user"`
	// RedisMemAfterPerUserKB is the same growth from before the storm to
	// the end of the target phase and the idle window after it: what the
	// messages left besides, the events no poll acknowledged yet and the
	// dedup keys of those acknowledged (meta 'dk', at most 1,020 bytes a
	// session); RedisAckedKeysBytesPerUser is that field's length then,
	// summed over the sessions, per online user.
	RedisMemAfterPerUserKB     float64 `json:"redis_mem_after_phase_per_user_kb"`
	RedisAckedKeysBytesPerUser float64 `json:"redis_acked_keys_bytes_per_user"`
	usedBefore                 int64   // Redis's used_memory before the storm
	online                     int
	// RedisCmdsPerMsg is every command Redis ran during the target phase
	// (INFO commandstats: a script counts once under evalsha and each
	// command it runs once more) per delivered message; RedisScriptsPerMsg
	// the script calls among them, one round trip each; RedisCommands the
	// former by command name.
	RedisCmdsPerMsg    float64            `json:"redis_cmds_per_msg"`
	RedisScriptsPerMsg float64            `json:"redis_scripts_per_msg"`
	RedisCommands      map[string]float64 `json:"redis_cmds_per_msg_by_name,omitempty"`
	// RedisIdleCmdsPerSec is the commands Redis ran per second with every
	// user online and no message sent (the lease renewals: they grow with
	// the sessions over the TTL, not with the traffic); RedisMsgCmdsPerMsg
	// what the messages themselves cost: the phase's commands less the idle
	// rate over its length, per delivered message. RedisIdleScriptsPerSec
	// and RedisMsgScriptsPerMsg are the same for the script calls alone.
	RedisIdleCmdsPerSec    float64 `json:"redis_idle_cmds_per_s"`
	RedisMsgCmdsPerMsg     float64 `json:"redis_msg_cmds_per_msg"`
	RedisIdleScriptsPerSec float64 `json:"redis_idle_scripts_per_s"`
	RedisMsgScriptsPerMsg  float64 `json:"redis_msg_scripts_per_msg"`
	// RedisCPUPer1k is Redis's CPU seconds per 1,000 delivered messages
	// (part of the path's CPUPer1k).
	RedisCPUPer1k float64 `json:"redis_cpu_s_per_1k_msgs"`
}

// stopCluster stops the nodes (SIGTERM, each releasing its leases, all at
// once), then Redis.
func (r *rig) stopCluster() {
	var wg sync.WaitGroup
	for _, d := range r.nodes {
		wg.Go(d.Stop)
	}
	wg.Wait()
	if r.redis != nil {
		r.redis.Stop()
	}
}

// redisReading is Redis's statistics and CPU seconds now; zero without a
// Redis.
func (r *rig) redisReading(ctx context.Context) (timedStats, float64, error) {
	if r.redis == nil {
		return timedStats{}, 0, nil
	}
	cpu, err := CPUSeconds(r.redis.PID())
	if err != nil {
		return timedStats{}, 0, err
	}
	st, err := r.redis.stats(ctx)
	return timedStats{st, time.Now()}, cpu, err
}

// timedStats is a reading of Redis and when it was taken.
type timedStats struct {
	redisStats
	at time.Time
}

// clusterAfterLogin reads the cluster's figures after the login storm:
// the leases the nodes hold and Redis's growth since before it.
func (r *rig) clusterAfterLogin(ctx context.Context, before redisStats, online int) (*ClusterResult, error) {
	c := &ClusterResult{Nodes: len(r.nodes), LeaseTTLSeconds: r.cfg.ClusterLeaseTTL.Seconds(), usedBefore: before.UsedMemory, online: online}
	if c.LeaseTTLSeconds == 0 {
		c.LeaseTTLSeconds = defaultLeaseTTL.Seconds()
	}
	after, err := r.redis.stats(ctx)
	if err != nil {
		return nil, err
	}
	c.RedisMemPerUserKB = float64(after.UsedMemory-before.UsedMemory) / 1024 / float64(online)
	c.RedisKeysPerUser = float64(after.Keys-before.Keys) / float64(online)
	leases, err := r.nodesMetric(ctx, "imsidecar_cluster_leases")
	if err != nil {
		return nil, err
	}
	c.Leases = int(leases)
	r.cfg.Logger.Info("cluster after the login storm", "path", r.path, "leases", c.Leases, "redis_kb_per_user", c.RedisMemPerUserKB,
		"redis_keys_per_user", c.RedisKeysPerUser)
	return c, nil
}

// clusterAfterPhase reads the target phase's Redis figures into c, then
// measures Redis idle (every user online, nothing sent).
func (r *rig) clusterAfterPhase(ctx context.Context, c *ClusterResult, ph Phase) error {
	idle, idleScripts, err := r.redisIdle(ctx)
	if err != nil {
		return err
	}
	c.RedisIdleCmdsPerSec, c.RedisIdleScriptsPerSec = idle, idleScripts
	if err := r.redisAfterPhase(ctx, c); err != nil {
		return err
	}
	if ph.Delivered == 0 {
		return nil
	}
	msgs := float64(ph.Delivered)
	var total int64
	c.RedisCommands = map[string]float64{}
	for name, n := range ph.redisCalls {
		total += n
		c.RedisCommands[name] = float64(n) / msgs
	}
	c.RedisCmdsPerMsg = float64(total) / msgs
	c.RedisScriptsPerMsg = float64(scriptCalls(ph.redisCalls)) / msgs
	c.RedisMsgCmdsPerMsg = max(0, float64(total)-idle*ph.redisSecs) / msgs
	c.RedisMsgScriptsPerMsg = max(0, float64(scriptCalls(ph.redisCalls))-idleScripts*ph.redisSecs) / msgs
	c.RedisCPUPer1k = ph.cpuRedis / (msgs / 1000)
	r.cfg.Logger.Info("cluster Redis", "path", r.path, "cmds_per_msg", c.RedisCmdsPerMsg, "scripts_per_msg", c.RedisScriptsPerMsg,
		"idle_cmds_per_s", c.RedisIdleCmdsPerSec, "msg_cmds_per_msg", c.RedisMsgCmdsPerMsg, "msg_scripts_per_msg", c.RedisMsgScriptsPerMsg)
	return nil
}

// redisAfterPhase reads Redis's memory and the sessions' acknowledged
// dedup keys once the target phase and the idle window are over.
func (r *rig) redisAfterPhase(ctx context.Context, c *ClusterResult) error {
	if c.online == 0 {
		return nil
	}
	st, err := r.redis.stats(ctx)
	if err != nil {
		return err
	}
	dk, err := r.redis.ackedKeysBytes(ctx)
	if err != nil {
		return err
	}
	c.RedisMemAfterPerUserKB = float64(st.UsedMemory-c.usedBefore) / 1024 / float64(c.online)
	c.RedisAckedKeysBytesPerUser = float64(dk) / float64(c.online)
	r.cfg.Logger.Info("cluster Redis after the phase", "path", r.path, "redis_kb_per_user", c.RedisMemAfterPerUserKB,
		"acked_keys_bytes_per_user", c.RedisAckedKeysBytesPerUser)
	return nil
}
