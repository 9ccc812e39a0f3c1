package phpsession

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// scriptedStore returns its records in order, then the last one forever.
// It stands in for a files store only to replay, deterministically, reads
// real PHP produces rarely (TestLookupWhilePHPRewrites races the real one).
type scriptedStore struct {
	recs  []Record
	loads int
}

func (s *scriptedStore) Load(context.Context, string) (Record, error) {
	rec := s.recs[min(s.loads, len(s.recs)-1)]
	s.loads++
	return rec, nil
}

func (s *scriptedStore) Ready(context.Context) error { return nil }

func (s *scriptedStore) Close() error { return nil }

// TestLookupUnlockedReads: a read taken while PHP held the lock decides
// for the user when it decodes to one, and never against the user: an
// empty or torn one is read again, and if it stays bad the answer is
// ErrUnavailable, not a logout. A locked (proven) read still decides.
func TestLookupUnlockedReads(t *testing.T) {
	const good = `phpgw_session|a:2:{s:10:"session_id";s:3:"abc";s:11:"session_lid";s:5:"alice";}` +
		`phpgw_info|a:1:{s:12:"expressomail";a:1:{s:4:"user";a:2:{s:11:"account_lid";s:5:"alice";s:6:"passwd";s:2:"pw";}}}`
	empty := Record{Version: "v0", Unlocked: true}
	torn := Record{Data: []byte(good[:60]), Version: "v1", Unlocked: true}
	whole := Record{Data: []byte(good), Version: "v2", Unlocked: true}
	for _, tc := range []struct {
		name  string
		recs  []Record
		want  error // nil: logged in as alice
		loads int   // at least
	}{
		{"unlocked whole", []Record{whole}, nil, 1},
		{"empty then whole", []Record{empty, empty, whole}, nil, 3},
		{"torn then whole", []Record{torn, whole}, nil, 2},
		{"always empty", []Record{empty}, ErrUnavailable, 3},
		{"always torn", []Record{torn}, ErrUnavailable, 3},
		{"locked empty", []Record{{Version: "v3"}}, ErrNotLoggedIn, 1},
		{"locked torn", []Record{{Data: torn.Data, Version: "v4"}}, ErrMalformed, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				st := &scriptedStore{recs: tc.recs}
				r := &Reader{cfg: Config{Serializer: SerializerPHP, Limits: DefaultLimits, MaxLifetime: time.Hour,
					CacheSize: 10, LockWait: 250 * time.Millisecond, MinIDLength: DefaultMinIDLength, Profile: ExpressoProfile(0)},
					store: st, now: time.Now, cache: map[[sha256.Size]byte]cached{}}
				s, err := r.Lookup(t.Context(), "abcdefghijklmnopqrstuvwxyz012345")
				switch {
				case tc.want == nil && (err != nil || s.Identity.User != "alice"):
					t.Fatalf("Lookup: %v, want alice", err)
				case tc.want != nil && !errors.Is(err, tc.want):
					t.Fatalf("Lookup: %v, want %v", err, tc.want)
				}
				if st.loads < tc.loads {
					t.Errorf("%d loads, want at least %d", st.loads, tc.loads)
				}
				// A bad unlocked read is never cached as a verdict.
				if errors.Is(tc.want, ErrUnavailable) && len(r.cache) != 0 {
					t.Errorf("%d cache entries after an unavailable read", len(r.cache))
				}
			})
		})
	}
}
