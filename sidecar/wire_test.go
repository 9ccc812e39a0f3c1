package sidecar

import (
	"encoding/json"
	"maps"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// TestOneMessageShape: a message shows the same fields, with the same
// values, as a "message" event and as a GET /v1/history entry; the entry
// only adds archive_id and time.
func TestOneMessageShape(t *testing.T) {
	stamp := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, m := range []xmppconn.Message{
		{From: "bob@example.test/x", To: "alice@example.test", ID: "m1", Type: xmppconn.ChatMessage, Body: "oi", Thread: "t"},
		{From: "sala@conference.example.test/Bob", To: "alice@example.test/web", ID: "g1", Type: xmppconn.GroupChatMessage, Body: "oi", Subject: "Pauta", Delay: stamp, Own: true},
		{From: "alice@example.test/desktop", To: "bob@example.test", ID: "c1", Type: xmppconn.ChatMessage, Body: "oi", Carbon: "sent"},
		{From: "example.test", Body: "down at 5", Type: ""},
	} {
		event, err := json.Marshal(newMessageJSON(&m))
		if err != nil {
			t.Fatal(err)
		}
		entry, err := json.Marshal(newHistoryMessage(&xmppconn.ArchivedMessage{Message: m, ArchiveID: "A1", Time: stamp}))
		if err != nil {
			t.Fatal(err)
		}
		var ev, en map[string]any
		if err := json.Unmarshal(event, &ev); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(entry, &en); err != nil {
			t.Fatal(err)
		}
		if en["archive_id"] != "A1" || en["time"] != "2026-01-02T03:04:05Z" {
			t.Fatalf("history entry %s", entry)
		}
		delete(en, "archive_id")
		delete(en, "time")
		if !maps.Equal(ev, en) {
			t.Fatalf("event %s\nentry %s", event, entry)
		}
		for _, k := range []string{"from", "to", "id", "type", "body", "thread", "delay", "carbon"} {
			if _, ok := ev[k]; !ok {
				t.Errorf("%s lacks %q", event, k)
			}
		}
		if ev["type"] == "" {
			t.Errorf("%s: an untyped message must show type normal", event)
		}
	}
}

// TestWireAnswersAsMaps: the answers that were written as maps before they
// had types keep the map's bytes (encoding/json writes a map's keys in
// order): clients that compare bodies see no change.
func TestWireAnswersAsMaps(t *testing.T) {
	for _, c := range []struct {
		typed any
		asMap any
	}{
		{connectOut{Cursor: "1:2", JID: "a@b/c", State: "online"}, map[string]string{"jid": "a@b/c", "state": "online", "cursor": "1:2"}},
		{meOut{Email: "e", FullName: "F", JID: "a@b", State: "offline", User: "a"}, map[string]string{"user": "a", "jid": "a@b", "fullname": "F", "email": "e", "state": "offline"}},
		{sentOut{ID: "m1"}, map[string]string{"id": "m1"}},
		{blocklistOut{Items: []string{"x@y"}}, map[string]any{"items": []string{"x@y"}}},
		{blocklistOut{}, map[string]any{"items": []string(nil)}},
		{vcardOut{Email: "e", FullName: "F", HasPhoto: true, JID: "a@b", Nickname: "n", PhotoType: "image/png"},
			map[string]any{"jid": "a@b", "fullname": "F", "nickname": "n", "email": "e", "photo_type": "image/png", "has_photo": true}},
		{roomsOut{Joined: []joinedRoomOut{}, Rooms: []roomItem{{JID: "r@s", Name: "r"}}, Service: "s"},
			map[string]any{"service": "s", "rooms": []roomItem{{JID: "r@s", Name: "r"}}, "joined": []joinedRoomOut{}}},
		{prebindOut{JID: "a@b/c", RID: 42, SID: "sid", URL: "/http-bind"}, map[string]any{"jid": "a@b/c", "sid": "sid", "rid": int64(42), "url": "/http-bind"}},
	} {
		typed, err := json.Marshal(c.typed)
		if err != nil {
			t.Fatal(err)
		}
		asMap, err := json.Marshal(c.asMap)
		if err != nil {
			t.Fatal(err)
		}
		if string(typed) != string(asMap) {
			t.Errorf("%T = %s, the map was %s", c.typed, typed, asMap)
		}
	}
}
