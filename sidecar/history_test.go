package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// History answers from a canned archive: "nomam" archives are unsupported,
// "gone" ids unknown; it records the query it was asked.
func (c *fakeConn) History(_ context.Context, q xmppconn.HistoryQuery) (xmppconn.HistoryPage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastHistory = q
	switch {
	case q.Room == "nomam@conference.example.test":
		return xmppconn.HistoryPage{}, fmt.Errorf("%w: message archive", xmppconn.ErrUnsupported)
	case q.After == "gone":
		return xmppconn.HistoryPage{}, &xmppconn.StanzaError{Type: "modify", Condition: "item-not-found"}
	}
	t := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return xmppconn.HistoryPage{
		Messages: []xmppconn.ArchivedMessage{{ArchiveID: "A1", Time: t, Message: xmppconn.Message{From: "bob@example.test/x", To: "alice@example.test", ID: "m1", Type: "chat", Body: "hi"}}},
		Complete: true, First: "A1", Last: "A1", Count: -1,
	}, nil
}

func (c *fakeConn) SetAvatarHash(_ context.Context, hash string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ownAvatar = &hash
	return nil
}

func TestParseHistoryQuery(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		query string
		want  xmppconn.HistoryQuery
		err   bool
	}{
		{"", xmppconn.HistoryQuery{}, false},
		{"with=Bob@Example.test&max=10", xmppconn.HistoryQuery{With: "bob@example.test", Max: 10}, false},
		{"before=", xmppconn.HistoryQuery{Last: true}, false},
		{"before=A9&after=A1", xmppconn.HistoryQuery{Last: true, Before: "A9", After: "A1"}, false},
		{"room=lounge@conference.example.test&start=2026-01-02T03:04:05Z&end=2026-01-02T04:04:05%2B01:00",
			xmppconn.HistoryQuery{Room: "lounge@conference.example.test", Start: start, End: start}, false},
		{"max=0", xmppconn.HistoryQuery{}, true},
		{"max=101", xmppconn.HistoryQuery{}, true},
		{"max=ten", xmppconn.HistoryQuery{}, true},
		{"with=a@@b", xmppconn.HistoryQuery{}, true},
		{"room=lounge@conference.example.test/nick", xmppconn.HistoryQuery{}, true},
		{"start=yesterday", xmppconn.HistoryQuery{}, true},
		{"start=2026-01-02T03:04:05Z&end=2026-01-01T03:04:05Z", xmppconn.HistoryQuery{}, true},
		{"before=" + strings.Repeat("x", 300), xmppconn.HistoryQuery{}, true},
		{"max=1&max=2", xmppconn.HistoryQuery{}, true},
		{"page=2", xmppconn.HistoryQuery{}, true},
	} {
		v, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseHistoryQuery(v)
		if (err != nil) != tc.err {
			t.Errorf("%q: err = %v", tc.query, err)
			continue
		}
		if !tc.err && (got.With != tc.want.With || got.Room != tc.want.Room || got.Before != tc.want.Before || got.After != tc.want.After ||
			got.Last != tc.want.Last || got.Max != tc.want.Max || !got.Start.Equal(tc.want.Start) || !got.End.Equal(tc.want.End)) {
			t.Errorf("%q: got %+v, want %+v", tc.query, got, tc.want)
		}
	}
}

// TestHistoryAPI: the answer's shape, and the error codes of history.
func TestHistoryAPI(t *testing.T) {
	h := newHarness(t, "")
	sid := []string{"X-Session-Id", goodID}
	if rec := h.do("GET", "/v1/history", "", sid...); rec.Code != 409 || h.code(rec) != "not_connected" {
		t.Fatalf("before connect: %d %s", rec.Code, rec.Body)
	}
	if rec := h.do("POST", "/v1/connect", "", sid...); rec.Code != 200 {
		t.Fatalf("connect: %d %s", rec.Code, rec.Body)
	}
	rec := h.do("GET", "/v1/history?with=bob@example.test&before=&max=20", "", sid...)
	if rec.Code != 200 {
		t.Fatalf("history: %d %s", rec.Code, rec.Body)
	}
	// A history entry is the message event's shape (messageJSON) between
	// archive_id and time.
	want := `{"messages":[{"archive_id":"A1","from":"bob@example.test/x","to":"alice@example.test","id":"m1","type":"chat","body":"hi","thread":"","delay":null,"carbon":null,"time":"2026-01-02T03:04:05Z"}],"complete":true,"first":"A1","last":"A1"}`
	if got := strings.TrimSpace(rec.Body.String()); got != want {
		t.Fatalf("history answer\n got %s\nwant %s", got, want)
	}
	var v map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	if q := h.conn.lastHistory; !q.Last || q.Before != "" || q.With != "bob@example.test" || q.Max != 20 {
		t.Fatalf("query passed on: %+v", q)
	}
	for _, tc := range []struct {
		path   string
		status int
		code   string
	}{
		{"/v1/history?max=1000", 400, "bad_request"},
		{"/v1/history?start=tomorrow", 400, "bad_request"},
		{"/v1/history?room=nomam@conference.example.test", 501, "feature_unavailable"},
		{"/v1/history?after=gone", 404, "not_found"},
	} {
		rec := h.do("GET", tc.path, "", sid...)
		if rec.Code != tc.status || h.code(rec) != tc.code {
			t.Errorf("%s = %d %s, want %d %s", tc.path, rec.Code, rec.Body, tc.status, tc.code)
		}
	}
	if rec := h.do("GET", "/v1/history", "", "Cookie", "sessionid="+goodID); rec.Code != 401 {
		t.Fatalf("history by cookie: %d", rec.Code)
	}
}

// TestPresenceAvatar: the XEP-0153 hash reaches the presence event and the
// roster, is omitted when unknown, and survives a presence without it.
func TestPresenceAvatar(t *testing.T) {
	h := newHarness(t, "")
	sid := []string{"X-Session-Id", goodID}
	if rec := h.do("POST", "/v1/connect", "", sid...); rec.Code != 200 {
		t.Fatalf("connect: %d %s", rec.Code, rec.Body)
	}
	hash, none := "0123456789abcdef0123456789abcdef01234567", ""
	h.conn.roster = []xmppconn.RosterItem{{JID: "bob@example.test", Subscription: "both"}, {JID: "carol@example.test", Subscription: "both"}}
	h.handler.HandleEvent(&xmppconn.Presence{From: "bob@example.test/x", Type: "available", Avatar: &hash})
	h.handler.HandleEvent(&xmppconn.Presence{From: "bob@example.test/x", Type: "available", Show: "away"})
	h.handler.HandleEvent(&xmppconn.Presence{From: "carol@example.test/y", Type: "available", Avatar: &none})
	ev := h.do("GET", "/v1/events?wait=0", "", sid...).Body.String()
	for _, want := range []string{`"from":"bob@example.test/x","type":"available","show":"","status":"","priority":0,"avatar":"` + hash + `"}`,
		`"from":"bob@example.test/x","type":"available","show":"away","status":"","priority":0}`,
		`"from":"carol@example.test/y","type":"available","show":"","status":"","priority":0,"avatar":""}`} {
		if !strings.Contains(ev, want) {
			t.Errorf("events lack %s:\n%s", want, ev)
		}
	}
	roster := h.do("GET", "/v1/roster", "", sid...).Body.String()
	for _, want := range []string{`{"resource":"x","show":"away","status":"","priority":0,"avatar":"` + hash + `"}`,
		`{"resource":"y","show":"","status":"","priority":0,"avatar":""}`} {
		if !strings.Contains(roster, want) {
			t.Errorf("roster lacks %s:\n%s", want, roster)
		}
	}
}
