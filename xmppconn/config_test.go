package xmppconn

import (
	"errors"
	"testing"
	"time"
)

func TestConfigNormalize(t *testing.T) {
	base := Config{Addr: "127.0.0.1:5222", Domain: "Example.ORG", User: "Alice", Password: "pw", Resource: "web"}
	tests := []struct {
		name string
		mod  func(*Config)
		err  error
	}{
		{"ok", func(*Config) {}, nil},
		{"no domain", func(c *Config) { c.Domain = "" }, ErrConfig},
		{"bad domain", func(c *Config) { c.Domain = "a b" }, ErrConfig},
		{"domain with local", func(c *Config) { c.Domain = "a@b" }, ErrConfig},
		{"no user", func(c *Config) { c.User = "" }, ErrConfig},
		{"bad user", func(c *Config) { c.User = "a/b" }, ErrConfig},
		{"no password", func(c *Config) { c.Password = "" }, ErrConfig},
		{"bad resource", func(c *Config) { c.Resource = "\x00" }, ErrConfig},
		{"bad tls", func(c *Config) { c.TLS = "ssl" }, ErrConfig},
		{"plaintext loopback", func(c *Config) { c.TLS = TLSNone }, nil},
		{"plaintext localhost", func(c *Config) { c.TLS = TLSNone; c.Addr = "localhost:5222" }, nil},
		{"plaintext ipv6 loopback", func(c *Config) { c.TLS = TLSNone; c.Addr = "[::1]:5222" }, nil},
		{"plaintext remote", func(c *Config) { c.TLS = TLSNone; c.Addr = "192.0.2.1:5222" }, ErrTLSRequired},
		{"plaintext by SRV", func(c *Config) { c.TLS = TLSNone; c.Addr = "" }, ErrTLSRequired},
		{"bad addr", func(c *Config) { c.Addr = "nohostport" }, ErrConfig},
		{"negative ping", func(c *Config) { c.PingInterval = -1 }, ErrConfig},
		{"backoff order", func(c *Config) { c.MinBackoff = time.Minute; c.MaxBackoff = time.Second }, ErrConfig},
		{"tiny stanza limit", func(c *Config) { c.MaxStanzaSize = 100 }, ErrConfig},
		{"tiny send limit", func(c *Config) { c.MaxSendSize = 100 }, ErrConfig},
		{"negative send limit", func(c *Config) { c.MaxSendSize = -1 }, ErrConfig},
		{"negative queue", func(c *Config) { c.MaxQueue = -1 }, ErrConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			tt.mod(&cfg)
			got, err := cfg.normalize()
			if !errors.Is(err, tt.err) {
				t.Fatalf("normalize() error %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if got.Domain != "example.org" || got.User != "alice" || got.Handler == nil || got.Logger == nil ||
				got.MaxStanzaSize != DefaultMaxStanzaSize || got.MaxSendSize != DefaultMaxSendSize || got.PingInterval != DefaultPingInterval || got.MaxQueue != DefaultMaxQueue {
				t.Fatalf("defaults not applied: %+v", got)
			}
			if tt.name == "ok" && got.TLS != TLSStartTLS {
				t.Fatalf("TLS = %q, want starttls", got.TLS)
			}
		})
	}
}
