package sidecar

import (
	"bytes"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// TestSessionLog: the per-session logger writes exactly what
// Logger.With("user", ..., "session", ...) writes, also after With and
// WithGroup on it.
func TestSessionLog(t *testing.T) {
	s := &session{user: "alice", short: "0123abcd"}
	at := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	noTime := &slog.HandlerOptions{ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			return slog.Time(slog.TimeKey, at)
		}
		return a
	}}
	tests := []struct {
		name string
		log  func(l *slog.Logger)
	}{
		{"plain", func(l *slog.Logger) { l.Info("xmpp online", "jid", "alice@example.test/web", "took", time.Second) }},
		{"no attrs", func(l *slog.Logger) { l.Warn("xmpp authentication failed") }},
		{"with", func(l *slog.Logger) { l.With("k", 1).Info("m", "x", "y") }},
		{"group", func(l *slog.Logger) { l.WithGroup("g").Info("m", "x", "y") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, newHandler := range []func(*bytes.Buffer) slog.Handler{
				func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, noTime) },
				func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, noTime) },
			} {
				var want, got bytes.Buffer
				tc.log(slog.New(newHandler(&want)).With("user", s.user, "session", s.short))
				tc.log(slog.New(sessionLog{newHandler(&got), s}))
				if got.String() != want.String() {
					t.Errorf("got  %s\nwant %s", got.String(), want.String())
				}
			}
		})
	}
}

// TestTrackPresence: the presence table keeps each contact's available
// resources sorted, forgets unavailable ones and keeps a known avatar
// hash when a presence does not carry one (XEP-0153).
func TestTrackPresence(t *testing.T) {
	hash, none := "abc123", ""
	tests := []struct {
		name string
		in   []xmppconn.Presence
		want map[string][]presenceInfo
	}{
		{"one", []xmppconn.Presence{{From: "bob@example.test/web", Show: "away", Status: "out", Priority: 5}},
			map[string][]presenceInfo{"bob@example.test": {{Resource: "web", Show: "away", Status: "out", Priority: 5}}}},
		{"sorted resources", []xmppconn.Presence{{From: "bob@example.test/web"}, {From: "bob@example.test/desktop"}, {From: "bob@example.test/phone"}},
			map[string][]presenceInfo{"bob@example.test": {{Resource: "desktop"}, {Resource: "phone"}, {Resource: "web"}}}},
		{"update in place", []xmppconn.Presence{{From: "bob@example.test/web"}, {From: "bob@example.test/web", Show: "dnd"}},
			map[string][]presenceInfo{"bob@example.test": {{Resource: "web", Show: "dnd"}}}},
		{"unavailable one of two", []xmppconn.Presence{{From: "bob@example.test/web"}, {From: "bob@example.test/phone"}, {From: "bob@example.test/web", Type: "unavailable"}},
			map[string][]presenceInfo{"bob@example.test": {{Resource: "phone"}}}},
		{"unavailable last", []xmppconn.Presence{{From: "bob@example.test/web"}, {From: "bob@example.test/web", Type: "unavailable"}},
			map[string][]presenceInfo{}},
		{"unavailable unknown", []xmppconn.Presence{{From: "carol@example.test/web", Type: "unavailable"}},
			map[string][]presenceInfo{}},
		{"bare JID", []xmppconn.Presence{{From: "bob@example.test"}},
			map[string][]presenceInfo{"bob@example.test": {{Resource: ""}}}},
		{"avatar kept", []xmppconn.Presence{{From: "bob@example.test/web", Avatar: &hash}, {From: "bob@example.test/web", Show: "away"}},
			map[string][]presenceInfo{"bob@example.test": {{Resource: "web", Show: "away", Avatar: &hash}}}},
		{"avatar removed", []xmppconn.Presence{{From: "bob@example.test/web", Avatar: &hash}, {From: "bob@example.test/web", Avatar: &none}},
			map[string][]presenceInfo{"bob@example.test": {{Resource: "web", Avatar: &none}}}},
		{"two contacts", []xmppconn.Presence{{From: "bob@example.test/web"}, {From: "carol@example.test/web", Show: "xa"}},
			map[string][]presenceInfo{"bob@example.test": {{Resource: "web"}}, "carol@example.test": {{Resource: "web", Show: "xa"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &session{presence: map[string][]presenceInfo{}}
			for _, p := range tc.in {
				s.trackPresence(&p)
			}
			if !reflect.DeepEqual(s.presence, tc.want) {
				t.Errorf("table %+v, want %+v", s.presence, tc.want)
			}
			for bare, want := range tc.want {
				got := s.presenceOf(bare)
				if !reflect.DeepEqual(got, want) {
					t.Errorf("presenceOf(%s) = %+v, want %+v", bare, got, want)
				}
				got[0].Show = "changed" // a copy: the table stays as it was
				if s.presence[bare][0].Show == "changed" {
					t.Errorf("presenceOf(%s) returned the table itself", bare)
				}
			}
			if got := s.presenceOf("nobody@example.test"); len(got) != 0 || got == nil {
				t.Errorf("presenceOf(unknown) = %#v, want an empty list", got)
			}
		})
	}
}
