package loadtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisServerBin is the Debian package's server binary (found on PATH).
const RedisServerBin = "redis-server"

// redisServer is a private redis-server on loopback for the cluster paths,
// persisted as docs/CLUSTER.md tells a site to run it: an append-only file
// synced every second, no RDB snapshots. It is a lean twin of
// phpsessiontest.StartPersistentRedis, which needs a testing.TB.
type redisServer struct {
	Addr    string
	LogFile string
	cmd     *exec.Cmd
	done    chan struct{}
	rdb     *redis.Client // the generator's own connection, for INFO
}

// startRedis runs redis-server in dir and waits until it answers PING.
func startRedis(ctx context.Context, dir string) (*redisServer, error) {
	bin, err := exec.LookPath(RedisServerBin)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %s missing (apt-get install redis-server): %w", RedisServerBin, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	s := &redisServer{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), LogFile: filepath.Join(dir, "redis.log"),
		done: make(chan struct{})}
	cmd := exec.Command(bin, "--port", strconv.Itoa(ports[0]), "--bind", "127.0.0.1", "--dir", dir, "--logfile", s.LogFile,
		"--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--maxclients", "10000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("loadtest: starting redis-server: %w", err)
	}
	s.cmd = cmd
	go func() { cmd.Wait(); close(s.done) }()
	s.rdb = redis.NewClient(&redis.Options{Addr: s.Addr, PoolSize: 1, MaxRetries: -1})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case <-s.done:
			s.rdb.Close()
			log, _ := os.ReadFile(s.LogFile)
			return nil, fmt.Errorf("loadtest: redis-server exited during startup (%v); its log ends:\n%s", cmd.ProcessState, tail(log, 1500))
		default:
		}
		// Ready means answering PONG: while it loads its append-only file
		// redis-server accepts connections but answers -LOADING.
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := s.rdb.Ping(pctx).Err()
		cancel()
		if err == nil {
			return s, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.Stop()
			return nil, fmt.Errorf("loadtest: redis-server on %s not answering: %w", s.Addr, err)
		}
	}
}

// URL is the --cluster-redis value of a node.
func (s *redisServer) URL() string { return "redis://" + s.Addr }

// PID is the server's process id.
func (s *redisServer) PID() int { return s.cmd.Process.Pid }

// Stop kills the server and waits for it; its files go with the scratch
// directory.
func (s *redisServer) Stop() {
	s.rdb.Close()
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
}

// redisStats is what the generator reads of the server at one moment.
type redisStats struct {
	UsedMemory int64 // used_memory: bytes allocated, data and clients
	Keys       int64 // in database 0
	// Calls is commandstats' calls by command name, the generator's own
	// INFO left out. Redis counts a script once under eval or evalsha and
	// every command the script runs under that command's name as well.
	Calls map[string]int64
}

// stats reads INFO memory, keyspace and commandstats.
func (s *redisServer) stats(ctx context.Context) (redisStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	text, err := s.rdb.Info(ctx, "memory", "keyspace", "commandstats").Result()
	if err != nil {
		return redisStats{}, fmt.Errorf("loadtest: redis INFO: %w", err)
	}
	return parseRedisInfo(text)
}

// parseRedisInfo reads the fields redisStats holds from INFO's text.
func parseRedisInfo(text string) (redisStats, error) {
	st := redisStats{UsedMemory: -1, Calls: map[string]int64{}}
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimSpace(line)
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		switch {
		case k == "used_memory":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return st, fmt.Errorf("loadtest: redis INFO used_memory %q", v)
			}
			st.UsedMemory = n
		case k == "db0":
			n, err := strconv.ParseInt(infoField(v, "keys"), 10, 64)
			if err != nil {
				return st, fmt.Errorf("loadtest: redis INFO db0 %q", v)
			}
			st.Keys = n
		case strings.HasPrefix(k, "cmdstat_"):
			name := strings.TrimPrefix(k, "cmdstat_")
			n, err := strconv.ParseInt(infoField(v, "calls"), 10, 64)
			if err != nil {
				return st, fmt.Errorf("loadtest: redis INFO %s %q", k, v)
			}
			if name != "info" {
				st.Calls[name] = n
			}
		}
	}
	if st.UsedMemory < 0 {
		return st, fmt.Errorf("loadtest: redis INFO without used_memory")
	}
	return st, nil
}

// infoField returns the value of name in an INFO value like
// "keys=3,expires=3,avg_ttl=0".
func infoField(v, name string) string {
	for f := range strings.SplitSeq(v, ",") {
		if k, val, ok := strings.Cut(f, "="); ok && k == name {
			return val
		}
	}
	return ""
}

// callsSince returns the commands Redis ran between a and b, by name, and
// their total.
func callsSince(a, b redisStats) (map[string]int64, int64) {
	d := map[string]int64{}
	var total int64
	for name, n := range b.Calls {
		if delta := n - a.Calls[name]; delta > 0 {
			d[name] = delta
			total += delta
		}
	}
	return d, total
}

// scriptCalls counts the script invocations among calls: one round trip
// each, whatever the script runs.
func scriptCalls(calls map[string]int64) int64 {
	var n int64
	for _, name := range []string{"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"} {
		n += calls[name]
	}
	return n
}

// ackedKeysBytes sums, over the sessions' meta hashes, the length of the
// field 'dk' (the dedup keys of acknowledged events a node keeps for the
// one that takes a session over, docs/CLUSTER.md).
func (s *redisServer) ackedKeysBytes(ctx context.Context) (bytes int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	it := s.rdb.Scan(ctx, 0, "ims:*:m", 1000).Iterator()
	var keys []string
	for it.Next(ctx) {
		keys = append(keys, it.Val())
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("loadtest: redis SCAN: %w", err)
	}
	for len(keys) > 0 {
		batch := keys[:min(len(keys), 500)]
		keys = keys[len(batch):]
		cmds, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range batch {
				p.HStrLen(ctx, k, "dk")
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("loadtest: redis HSTRLEN: %w", err)
		}
		for _, c := range cmds {
			bytes += c.(*redis.IntCmd).Val()
		}
	}
	return bytes, nil
}
