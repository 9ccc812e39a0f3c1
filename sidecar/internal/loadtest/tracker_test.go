package loadtest

import (
	"strconv"
	"testing"
)

// TestTrackerCounts: each message has one fate — delivered, failed and
// never arrived, or lost — whatever order its send call's failure and
// its arrival come in, so Lost is never negative and a late arrival of
// a failed send is no duplicate.
func TestTrackerCounts(t *testing.T) {
	tests := []struct {
		name          string
		steps         string // d: delivered, f: send failed, in order
		wantDelivered int64
		wantDups      int64
		wantLost      int
		wantSettled   int64
	}{
		{"delivered", "d", 1, 0, 0, 1},
		{"lost", "", 0, 0, 1, 0},
		{"failed", "f", 0, 0, 0, 1},
		{"delivered then failed", "df", 1, 0, 0, 1},
		{"failed then delivered", "fd", 1, 0, 0, 1},
		{"delivered twice", "dd", 1, 1, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker(7, 1)
			for _, s := range tt.steps {
				if s == 'd' {
					tr.received(tr.body(0))
				} else {
					tr.failed(0)
				}
			}
			tr.received("lt-6-0") // an earlier phase's straggler
			tr.received(tr.prefix + strconv.Itoa(1))
			if got := tr.delivered.Load(); got != tt.wantDelivered {
				t.Errorf("delivered %d, want %d", got, tt.wantDelivered)
			}
			if got := tr.dups.Load(); got != tt.wantDups {
				t.Errorf("duplicates %d, want %d", got, tt.wantDups)
			}
			if got := tr.lost(1); got != tt.wantLost {
				t.Errorf("lost %d, want %d", got, tt.wantLost)
			}
			if got := tr.settled.Load(); got != tt.wantSettled {
				t.Errorf("settled %d, want %d", got, tt.wantSettled)
			}
		})
	}
}
