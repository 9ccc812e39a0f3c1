package xmppconn

import (
	"slices"
	"testing"
	"time"
)

// TestDiscoFeatures: disco#info lists the core's features, then the
// registered extensions' for the configuration (carbons only when on).
func TestDiscoFeatures(t *testing.T) {
	base := []string{nsDiscoI, nsPing, nsVersion, nsReceipts, nsChat}
	for _, tc := range []struct {
		carbons bool
		want    []string
	}{
		{false, base},
		{true, append(slices.Clone(base), nsCarbons)},
	} {
		if got := discoFeatures(&Config{Carbons: tc.carbons}); !slices.Equal(got, tc.want) {
			t.Errorf("carbons=%v: discoFeatures = %q, want %q", tc.carbons, got, tc.want)
		}
	}
	if got := discoFeatures(&Config{}); &got[0] == &baseDisco[0] {
		t.Error("discoFeatures returned the core's list itself")
	}
}

// TestFeaturesRegistered: each extension registered once, by name, with
// a hook; the core reaches group chat, archives and carbons only so.
func TestFeaturesRegistered(t *testing.T) {
	var names []string
	for _, f := range features {
		if f.disco == nil && f.inbound == nil && f.deliver == nil && f.owns == nil && f.bound == nil && f.restore == nil && f.restored == nil && f.broadcast == nil {
			t.Errorf("feature %q has no hook", f.name)
		}
		if (f.restore == nil) != (f.restored == nil) {
			t.Errorf("feature %q: restore and restored go together", f.name)
		}
		names = append(names, f.name)
	}
	slices.Sort(names)
	if want := []string{"carbons", "mam", "muc"}; !slices.Equal(names, want) {
		t.Errorf("registered features %q, want %q", names, want)
	}
}

// TestRoomJoinRestored: a room's join left unacknowledged by the old
// stream is not re-sent after a fresh stream re-joined the rooms; other
// presences and messages are.
func TestRoomJoinRestored(t *testing.T) {
	for _, tc := range []struct {
		raw  []byte
		want bool
	}{
		{encodeJoin("sala@conference.example.test", "ana", "", 0, time.Time{}, Presence{Show: ShowAway}), true},
		{encodePresence(Presence{Show: ShowAway}), false},
		{encodeLeave("sala@conference.example.test", "ana"), false},
		{encodeMessage(Message{To: "sala@conference.example.test", Type: GroupChatMessage, Body: "oi"}), false},
	} {
		if got := restoredByFeature(tc.raw); got != tc.want {
			t.Errorf("restoredByFeature(%s) = %v, want %v", tc.raw, got, tc.want)
		}
	}
}
