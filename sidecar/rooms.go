package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"expressolivre.org/imsidecar/xmppconn"
)

// Group chat (XEP-0045) through the API: GET /v1/rooms, POST
// /v1/rooms/{room}/join and /leave, PUT /v1/rooms/{room}/subject;
// messages to a room are POST /v1/messages with "type":"groupchat", and
// room presences are "room" events (docs/API.md).

// mucService is the configured MUC service, or the one the server announces.
func (a *api) mucService(ctx context.Context, conn roomMember) (string, error) {
	if a.cfg.XMPPMUCService != "" {
		return a.cfg.XMPPMUCService, nil
	}
	return conn.MUCService(ctx)
}

// roomCall is the start of every call on one room: the caller's stream
// (a mutating call, rate limited) and the room's bare JID from the path.
func (a *api) roomCall(r *http.Request, c *caller) (roomMember, string, error) {
	_, conn, err := a.mutate(c)
	if err != nil {
		return nil, "", err
	}
	room, err := a.roomJID(r.Context(), conn, r.PathValue("room"))
	if err != nil {
		return nil, "", err
	}
	return conn, room, nil
}

// roomJID resolves {room}: a bare room JID, or a room name on the MUC service.
func (a *api) roomJID(ctx context.Context, conn roomMember, raw string) (string, error) {
	if raw == "" || len(raw) > 1024 {
		return "", fmt.Errorf("%w: room is required", ErrBadRequest)
	}
	if !strings.Contains(raw, "@") {
		svc, err := a.mucService(ctx, conn)
		if err != nil {
			return "", err
		}
		raw += "@" + svc
	}
	j, err := xmppconn.ParseJID(raw)
	if err != nil || j.Local == "" || j.Resource != "" {
		return "", fmt.Errorf("%w: %q is not a room (name or room@service)", ErrBadRequest, raw)
	}
	return j.String(), nil
}

// rooms lists the MUC service's rooms and the rooms this session is in.
func (a *api) rooms(w http.ResponseWriter, r *http.Request, c *caller) error {
	var conn roomMember
	_, conn, err := a.live(c)
	if err != nil {
		return err
	}
	joined := conn.JoinedRooms()
	in := map[string]bool{}
	joinedOut := make([]joinedRoomOut, 0, len(joined))
	for _, jr := range joined {
		in[jr.Room] = true
		joinedOut = append(joinedOut, roomOut(jr))
	}
	items := []roomItem{}
	svc, err := a.mucService(r.Context(), conn)
	switch {
	case errors.Is(err, xmppconn.ErrNoMUCService):
		svc = ""
	case err != nil:
		return err
	default:
		list, err := conn.Rooms(r.Context(), svc)
		if err != nil {
			return err
		}
		for _, it := range list {
			name := it.Name
			if name == "" {
				name, _, _ = strings.Cut(it.JID, "@")
			}
			items = append(items, roomItem{JID: it.JID, Name: name, Joined: in[it.JID]})
		}
	}
	writeJSON(w, http.StatusOK, roomsOut{Service: svc, Rooms: items, Joined: joinedOut})
	return nil
}

// roomJoin joins (or creates) a room. Without a nick the user's full name
// is used, and the login when that name is taken.
func (a *api) roomJoin(w http.ResponseWriter, r *http.Request, c *caller) error {
	var body joinBody
	if err := decode(r, &body, true); err != nil {
		return err
	}
	if len(body.Nick) > 256 || len(body.Password) > 1024 {
		return fmt.Errorf("%w: nick or password too long", ErrBadRequest)
	}
	history := 0
	if body.History != nil {
		if *body.History < 0 || *body.History > 1000 {
			return fmt.Errorf("%w: history must be 0..1000", ErrBadRequest)
		}
		history = *body.History
		if history == 0 {
			history = -1
		}
	}
	public := true
	if body.Public != nil {
		public = *body.Public
	}
	conn, room, err := a.roomCall(r, c)
	if err != nil {
		return err
	}
	nicks := []string{body.Nick}
	if body.Nick == "" {
		ident := c.php.Identity
		nicks = []string{strings.TrimSpace(ident.FullName), ident.User}
		if nicks[0] == "" || nicks[0] == ident.User {
			nicks = nicks[1:]
		}
	}
	var jr xmppconn.JoinedRoom
	var created bool
	for i, nick := range nicks {
		jr, created, err = conn.JoinRoom(r.Context(), xmppconn.RoomJoin{Room: room, Nick: nick, Password: body.Password, History: history, Public: public})
		if err == nil || !errors.Is(err, xmppconn.ErrNickInUse) || i == len(nicks)-1 {
			break
		}
	}
	if errors.Is(err, xmppconn.ErrInvalidJID) {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, joinOut{roomOut(jr), created})
	return nil
}

// roomLeave leaves a room (a room not joined is fine).
func (a *api) roomLeave(w http.ResponseWriter, r *http.Request, c *caller) error {
	conn, room, err := a.roomCall(r, c)
	if err != nil {
		return err
	}
	if err := conn.LeaveRoom(r.Context(), room); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// roomSubject sets a room's subject ("" clears it).
func (a *api) roomSubject(w http.ResponseWriter, r *http.Request, c *caller) error {
	var body subjectBody
	if err := decode(r, &body, false); err != nil {
		return err
	}
	if len(body.Subject) > 4096 {
		return fmt.Errorf("%w: subject longer than 4096 bytes", ErrBadRequest)
	}
	conn, room, err := a.roomCall(r, c)
	if err != nil {
		return err
	}
	if err := conn.SetSubject(r.Context(), room, body.Subject); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
