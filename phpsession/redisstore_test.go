package phpsession

import (
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestRedisSavePaths: the save_path forms phpredis accepts for its redis
// and rediscluster handlers, and the ones we refuse with ErrConfig.
func TestRedisSavePaths(t *testing.T) {
	tests := []struct {
		spec    string
		hosts   int    // 0: must fail with ErrConfig
		prefix  string // of the first host
		cluster bool
	}{
		{"tcp://127.0.0.1:6379", 1, "PHPREDIS_SESSION:", false},
		{"tcp://a:1?weight=1, tcp://b:2?weight=2", 2, "PHPREDIS_SESSION:", false},
		{"tcp://a:1?weight=1 tcp://b:2?weight=2\ttcp://c:3?prefix=P:", 3, "PHPREDIS_SESSION:", false},
		{"unix:///run/redis.sock?database=1&prefix=X:", 1, "X:", false},
		{"redis://:pw@127.0.0.1:6380/2", 1, "PHPREDIS_SESSION:", false},
		{"seed[]=127.0.0.1:7000&seed[]=127.0.0.1:7001", 1, "PHPREDIS_CLUSTER_SESSION:", true},
		{"seed[]=h:7000&auth=pw&prefix=S:&timeout=2.5&read_timeout=1", 1, "S:", true},
		{"seed[0]=h:7000&auth[]=user&auth[]=pw", 1, "PHPREDIS_CLUSTER_SESSION:", true},
		{"timeout=2&seed[]=h:7000", 1, "PHPREDIS_CLUSTER_SESSION:", true},
		{"", 0, "", false},
		{" , ", 0, "", false},
		{"tcp://a:1?weight=0", 0, "", false},
		{"ftp://a:1", 0, "", false},
		{"seed[]=", 0, "", false},
		{"seed[]=nohost", 0, "", false},
		{"seed[]=h:7000&timeout=-1", 0, "", false},
	}
	for _, tt := range tests {
		s, err := NewRedisStore(tt.spec, RedisOptions{})
		if tt.hosts == 0 {
			if !errors.Is(err, ErrConfig) {
				t.Errorf("%q: err = %v, want ErrConfig", tt.spec, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.spec, err)
			continue
		}
		_, isCluster := s.hosts[0].client.(*redis.ClusterClient)
		if len(s.hosts) != tt.hosts || s.hosts[0].prefix != tt.prefix || isCluster != tt.cluster {
			t.Errorf("%q: %d hosts, prefix %q, cluster %v; want %d, %q, %v", tt.spec, len(s.hosts), s.hosts[0].prefix, isCluster,
				tt.hosts, tt.prefix, tt.cluster)
		}
		s.Close()
	}
}
