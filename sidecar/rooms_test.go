package sidecar

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"testing"

	"expressolivre.org/imsidecar/xmppconn"
)

// The fake stream's group chat: room names choose the refusal.
func (c *fakeConn) MUCService(context.Context) (string, error) { return "conference.example.test", nil }
func (c *fakeConn) Rooms(_ context.Context, svc string) ([]xmppconn.RoomItem, error) {
	return []xmppconn.RoomItem{{JID: "sala@" + svc, Name: "Sala"}, {JID: "cafe@" + svc}}, nil
}
func (c *fakeConn) JoinRoom(_ context.Context, j xmppconn.RoomJoin) (xmppconn.JoinedRoom, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	se := func(cond string) *xmppconn.StanzaError { return &xmppconn.StanzaError{Type: "cancel", Condition: cond} }
	local, _, _ := strings.Cut(j.Room, "@")
	switch {
	case local == "taken" || (local == "busy" && j.Nick != "alice"):
		return xmppconn.JoinedRoom{}, false, fmt.Errorf("%w: %w", xmppconn.ErrNickInUse, se("conflict"))
	case local == "secret" && j.Password != "pw":
		return xmppconn.JoinedRoom{}, false, fmt.Errorf("%w: %w", xmppconn.ErrRoomPassword, se("not-authorized"))
	case local == "banned":
		return xmppconn.JoinedRoom{}, false, fmt.Errorf("%w: %w", xmppconn.ErrRoomBanned, se("forbidden"))
	case local == "members":
		return xmppconn.JoinedRoom{}, false, fmt.Errorf("%w: %w", xmppconn.ErrRoomMembersOnly, se("registration-required"))
	case local == "locked":
		return xmppconn.JoinedRoom{}, false, fmt.Errorf("xmppconn: joining: %w", se("item-not-found"))
	}
	if c.rooms == nil {
		c.rooms = map[string]xmppconn.JoinedRoom{}
	}
	_, had := c.rooms[j.Room]
	jr := xmppconn.JoinedRoom{Room: j.Room, Nick: j.Nick, Joined: true, Occupants: []xmppconn.Occupant{
		{Room: j.Room, Nick: j.Nick, Affiliation: "owner", Role: "moderator", Self: true, JID: c.jid}}}
	c.rooms[j.Room] = jr
	return jr, !had, nil
}
func (c *fakeConn) LeaveRoom(_ context.Context, room string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.rooms, room)
	return nil
}
func (c *fakeConn) SetSubject(_ context.Context, room, subject string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	jr, ok := c.rooms[room]
	if !ok {
		return xmppconn.ErrNotInRoom
	}
	jr.Subject = subject
	c.rooms[room] = jr
	return nil
}
func (c *fakeConn) JoinedRooms() []xmppconn.JoinedRoom {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []xmppconn.JoinedRoom{}
	for _, jr := range c.rooms {
		out = append(out, jr)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Room < out[j].Room })
	return out
}

// TestRoomsAPI: join (default nick from the full name, then the login),
// list, subject, groupchat, leave; every refusal's code; room events.
func TestRoomsAPI(t *testing.T) {
	h := newHarness(t, "")
	sid := []string{"X-Session-Id", goodID}
	if rec := h.do("GET", "/v1/rooms", "", sid...); rec.Code != 409 || h.code(rec) != "not_connected" {
		t.Fatalf("rooms before connect: %d %s", rec.Code, rec.Body)
	}
	rec := h.do("POST", "/v1/connect", "", sid...)
	var conn struct{ Cursor string }
	jsonUnmarshal(rec.Body.Bytes(), &conn)

	rec = h.do("POST", "/v1/rooms/sala/join", "", sid...)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"jid":"sala@conference.example.test","nick":"Alice A","subject":"","joined":true`) ||
		!strings.Contains(rec.Body.String(), `"created":true`) || !strings.Contains(rec.Body.String(), `"affiliation":"owner","role":"moderator"`) {
		t.Fatalf("join: %d %s", rec.Code, rec.Body)
	}
	if rec := h.do("POST", "/v1/rooms/busy@conference.example.test/join", `{}`, sid...); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"nick":"alice"`) {
		t.Fatalf("default nick taken: %d %s", rec.Code, rec.Body)
	}
	rec = h.do("GET", "/v1/rooms", "", sid...)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"service":"conference.example.test"`) ||
		!strings.Contains(rec.Body.String(), `{"jid":"sala@conference.example.test","name":"Sala","joined":true}`) ||
		!strings.Contains(rec.Body.String(), `{"jid":"cafe@conference.example.test","name":"cafe","joined":false}`) {
		t.Fatalf("rooms: %d %s", rec.Code, rec.Body)
	}
	if rec := h.do("PUT", "/v1/rooms/sala/subject", `{"subject":"Pauta"}`, sid...); rec.Code != 204 || h.conn.rooms["sala@conference.example.test"].Subject != "Pauta" {
		t.Fatalf("subject: %d %s", rec.Code, rec.Body)
	}
	if rec := h.do("POST", "/v1/messages", `{"to":"sala@conference.example.test","type":"groupchat","body":"oi","receipt":true}`, sid...); rec.Code != 202 || h.conn.sent[0].Receipt || h.conn.sent[0].Type != "groupchat" {
		t.Fatalf("groupchat: %d %s %+v", rec.Code, rec.Body, h.conn.sent)
	}
	if rec := h.do("POST", "/v1/rooms/sala/leave", "", sid...); rec.Code != 204 || len(h.conn.rooms) != 1 {
		t.Fatalf("leave: %d %v", rec.Code, h.conn.rooms)
	}

	for _, tc := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/v1/rooms/taken/join", `{"nick":"x"}`, 409, "nick_in_use"},
		{"POST", "/v1/rooms/secret/join", `{"nick":"x"}`, 403, "room_password_required"},
		{"POST", "/v1/rooms/banned/join", `{"nick":"x"}`, 403, "room_banned"},
		{"POST", "/v1/rooms/members/join", `{"nick":"x"}`, 403, "room_members_only"},
		{"POST", "/v1/rooms/locked/join", `{"nick":"x"}`, 404, "not_found"},
		{"POST", "/v1/rooms/a@b@c/join", `{"nick":"x"}`, 400, "bad_request"},
		{"POST", "/v1/rooms/sala/join", `{"history":-1}`, 400, "bad_request"},
		{"POST", "/v1/rooms/sala/join", `{"colour":1}`, 400, "bad_request"},
		{"PUT", "/v1/rooms/nowhere/subject", `{"subject":"x"}`, 409, "not_in_room"},
		{"POST", "/v1/messages", `{"to":"sala@conference.example.test/Bob","type":"groupchat","body":"x"}`, 400, "bad_request"},
	} {
		if rec := h.do(tc.method, tc.path, tc.body, sid...); rec.Code != tc.status || h.code(rec) != tc.code {
			t.Errorf("%s %s = %d %s, want %d %s", tc.method, tc.path, rec.Code, rec.Body, tc.status, tc.code)
		}
	}
	if rec := h.do("POST", "/v1/rooms/secret/join", `{"nick":"x","password":"pw","history":0,"public":false}`, sid...); rec.Code != 200 {
		t.Errorf("join with password: %d %s", rec.Code, rec.Body)
	}

	// Room presences and groupchat messages as events.
	h.handler.HandleEvent(&xmppconn.Occupant{Room: "sala@conference.example.test", Nick: "Bob", JID: "bob@example.test/web", Type: "available",
		Affiliation: "member", Role: "participant", Codes: []int{100}})
	h.handler.HandleEvent(&xmppconn.Occupant{Room: "sala@conference.example.test", Nick: "Bob", Type: "unavailable", Affiliation: "member", Role: "none", NewNick: "Roberto", Codes: []int{303}})
	h.handler.HandleEvent(&xmppconn.Message{From: "sala@conference.example.test/Alice A", ID: "g1", Type: "groupchat", Body: "oi", Own: true})
	h.handler.HandleEvent(&xmppconn.Message{From: "sala@conference.example.test", Type: "groupchat", Subject: "Pauta"})
	body := h.do("GET", "/v1/events?wait=0&cursor="+conn.Cursor, "", sid...).Body.String()
	for _, want := range []string{
		`"event":"room","room":"sala@conference.example.test","nick":"Bob","jid":"bob@example.test/web","type":"available","show":"","status":"","affiliation":"member","role":"participant","self":false,"codes":[100],"new_nick":"","kicked":false,"banned":false,"reason":"","error":""`,
		`"type":"unavailable","show":"","status":"","affiliation":"member","role":"none","self":false,"codes":[303],"new_nick":"Roberto"`,
		`"event":"message","from":"sala@conference.example.test/Alice A","to":"","id":"g1","type":"groupchat","body":"oi","thread":"","delay":null,"carbon":null,"room":"sala@conference.example.test","nick":"Alice A","own":true`,
		`"body":"","subject":"Pauta","thread":"","delay":null,"carbon":null,"room":"sala@conference.example.test"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("events lack %s\n%s", want, body)
		}
	}
}

// FuzzRoomsAPI: the room routes answer any input without a 5xx.
func FuzzRoomsAPI(f *testing.F) {
	f.Add("POST", "sala", "join", `{"nick":"x","password":"p","history":3,"public":false}`)
	f.Add("PUT", "sala@conference.example.test", "subject", `{"subject":"s"}`)
	f.Add("POST", "a@b/c", "leave", ``)
	f.Fuzz(func(t *testing.T, method, room, action, body string) {
		h := newHarness(t, "")
		h.do("POST", "/v1/connect", "", "X-Session-Id", goodID)
		req, err := http.NewRequest(method, "http://sidecar/v1/rooms/"+url.PathEscape(room)+"/"+url.PathEscape(action), strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("X-Session-Id", goodID)
		rec := httptest.NewRecorder()
		h.srv.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %s/%s %q -> %d %s", method, room, action, body, rec.Code, rec.Body)
		}
	})
}

func TestStatusForRooms(t *testing.T) {
	for err, want := range map[error]string{
		xmppconn.ErrNickInUse: "nick_in_use", xmppconn.ErrRoomPassword: "room_password_required", xmppconn.ErrRoomBanned: "room_banned",
		xmppconn.ErrRoomMembersOnly: "room_members_only", xmppconn.ErrRoomCreation: "room_creation_forbidden", xmppconn.ErrRoomFull: "room_full",
		xmppconn.ErrNotInRoom: "not_in_room", xmppconn.ErrNoMUCService: "no_muc_service",
	} {
		if _, code := statusFor(fmt.Errorf("wrapped: %w", err)); code != want {
			t.Errorf("%v: %s, want %s", err, code, want)
		}
	}
}
