package phpsession_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
)

// TestRedisStoreStalled: a lookup's context deadline bounds it when Redis
// stops answering (SIGSTOP: connections accepted, nothing answered, as a
// master restarting, loading its append-only file or failing over). The
// save paths here ask for a 5 s read_timeout: go-redis waited it out
// whatever the deadline, and retried it (10 s a lookup), which held the
// calls of single-node sites and of the daemon's users alike. A lookup
// with a 0.5 s deadline now answers ErrUnavailable within it (asserted:
// under 2 s, a behaviour, not a speed goal); one in flight when Redis
// answers again gets Redis's answer.
func TestRedisStoreStalled(t *testing.T) {
	deployments := []struct {
		name  string
		start func(t *testing.T) (spec string, servers []*phpsessiontest.Redis)
	}{
		{"redis", func(t *testing.T) (string, []*phpsessiontest.Redis) {
			r := phpsessiontest.StartRedis(t)
			return r.Spec() + "?read_timeout=5", []*phpsessiontest.Redis{r}
		}},
		{"redis-cluster", func(t *testing.T) (string, []*phpsessiontest.Redis) {
			c := phpsessiontest.StartRedisCluster(t, 3)
			return c.Spec() + "&read_timeout=5", c.Nodes
		}},
	}
	for _, dep := range deployments {
		t.Run(dep.name, func(t *testing.T) {
			spec, servers := dep.start(t)
			st, err := phpsession.NewRedisStore(spec, phpsession.RedisOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			// Sessions spread over every master of a Redis Cluster.
			ids := []string{"stalledaaaaaaaaaaaaaaaaaaaaaaaaa", "stalledbbbbbbbbbbbbbbbbbbbbbbbbb", "stalledccccccccccccccccccccccccc"}
			lookup := func(id string, bound time.Duration) (time.Duration, error) {
				ctx, cancel := context.WithTimeout(t.Context(), bound)
				defer cancel()
				start := time.Now()
				_, err := st.Load(ctx, id)
				return time.Since(start), err
			}
			for _, id := range ids {
				if _, err := lookup(id, 5*time.Second); !errors.Is(err, phpsession.ErrNotFound) {
					t.Fatalf("Redis answering: %v, want ErrNotFound", err)
				}
			}
			wake := phpsessiontest.Stall(t, servers...)
			for _, id := range ids {
				d, err := lookup(id, 500*time.Millisecond)
				t.Logf("stalled, lookup %s…: %v in %v", id[:8], err, d.Round(time.Millisecond))
				if !errors.Is(err, phpsession.ErrUnavailable) {
					t.Errorf("stalled: %v, want ErrUnavailable", err)
				}
				if d > 2*time.Second {
					t.Errorf("stalled: a lookup with a 0.5 s deadline waited %v", d)
				}
			}
			// Redis answers again in the middle of a lookup: it gets the
			// answer, not an error, and the next lookups are served.
			time.AfterFunc(200*time.Millisecond, wake)
			d, err := lookup(ids[0], 3*time.Second)
			t.Logf("Redis answering mid-lookup: %v in %v", err, d.Round(time.Millisecond))
			if !errors.Is(err, phpsession.ErrNotFound) {
				t.Errorf("Redis answering mid-lookup: %v, want ErrNotFound", err)
			}
			for _, id := range ids {
				if _, err := lookup(id, 5*time.Second); !errors.Is(err, phpsession.ErrNotFound) && !strings.Contains(err.Error(), "CLUSTERDOWN") {
					t.Errorf("after the stall: %v, want ErrNotFound", err)
				}
			}
		})
	}
}
