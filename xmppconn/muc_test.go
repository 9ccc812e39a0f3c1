package xmppconn

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func TestParseOccupant(t *testing.T) {
	const room = "sala@conference.example.test"
	for _, tc := range []struct {
		name, xml string
		want      Occupant
		removed   bool
	}{
		{"self owner created", `<presence from="sala@conference.example.test/Alice"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="owner" role="moderator" jid="alice@example.test/web"/><status code="201"/><status code="110"/></x></presence>`,
			Occupant{Nick: "Alice", JID: "alice@example.test/web", Type: "available", Affiliation: "owner", Role: "moderator", Self: true, Codes: []int{201, 110}}, false},
		{"participant away, no real JID", `<presence from="sala@conference.example.test/Bob"><show>away</show><status>lunch</status><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="none" role="participant"/></x></presence>`,
			Occupant{Nick: "Bob", Type: "available", Show: "away", Status: "lunch", Affiliation: "none", Role: "participant", Codes: []int{}}, false},
		{"nick change", `<presence type="unavailable" from="sala@conference.example.test/Carol"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="member" role="participant" nick="Carolina"/><status code="303"/></x></presence>`,
			Occupant{Nick: "Carol", Type: "unavailable", Affiliation: "member", Role: "participant", NewNick: "Carolina", Codes: []int{303}}, false},
		{"kicked self", `<presence type="unavailable" from="sala@conference.example.test/Dave"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="none" role="none"><reason>spam</reason></item><status code="307"/><status code="110"/></x></presence>`,
			Occupant{Nick: "Dave", Type: "unavailable", Affiliation: "none", Role: "none", Self: true, Kicked: true, Reason: "spam", Codes: []int{307, 110}}, true},
		{"banned", `<presence type="unavailable" from="sala@conference.example.test/Eve"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="outcast" role="none"/><status code="301"/></x></presence>`,
			Occupant{Nick: "Eve", Type: "unavailable", Affiliation: "outcast", Role: "none", Banned: true, Codes: []int{301}}, true},
		{"destroyed", `<presence type="unavailable" from="sala@conference.example.test/Alice"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="none" role="none"/><destroy><reason>fim</reason></destroy><status code="110"/></x></presence>`,
			Occupant{Nick: "Alice", Type: "unavailable", Affiliation: "none", Role: "none", Self: true, Reason: "fim", Codes: []int{110}, destroyed: true}, true},
		{"shutdown keeps the room", `<presence type="unavailable" from="sala@conference.example.test/Alice"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="owner" role="none"/><status code="332"/><status code="110"/></x></presence>`,
			Occupant{Nick: "Alice", Type: "unavailable", Affiliation: "owner", Role: "none", Self: true, Codes: []int{332, 110}}, false},
		{"garbage codes and JIDs", `<presence from="sala@conference.example.test/X"><x xmlns="http://jabber.org/protocol/muc#user"><item jid="@@" nick="a/b"/><status code="x"/><status code="5"/></x></presence>`,
			Occupant{Nick: "X", Type: "available", Affiliation: "none", Role: "none", Codes: []int{}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := parseElement(stdHeader, []byte(tc.xml))
			if err != nil {
				t.Fatal(err)
			}
			got := parseOccupant(n, room, tc.want.Nick)
			tc.want.Room = room
			if got.Nick != tc.want.Nick || got.JID != tc.want.JID || got.Type != tc.want.Type || got.Show != tc.want.Show ||
				got.Status != tc.want.Status || got.Affiliation != tc.want.Affiliation || got.Role != tc.want.Role ||
				got.Self != tc.want.Self || got.NewNick != tc.want.NewNick || got.Kicked != tc.want.Kicked ||
				got.Banned != tc.want.Banned || got.Reason != tc.want.Reason || got.destroyed != tc.want.destroyed ||
				!slices.Equal(got.Codes, tc.want.Codes) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if got.removed() != tc.removed {
				t.Errorf("removed() = %v", got.removed())
			}
		})
	}
}

func TestJoinError(t *testing.T) {
	for cond, want := range map[string]error{
		"conflict": ErrNickInUse, "not-authorized": ErrRoomPassword, "forbidden": ErrRoomBanned,
		"registration-required": ErrRoomMembersOnly, "service-unavailable": ErrRoomFull, "not-allowed": ErrRoomCreation,
	} {
		err := joinError("r@s", &StanzaError{Type: "cancel", Condition: cond})
		var se *StanzaError
		if !errors.Is(err, want) || !errors.As(err, &se) || se.Condition != cond {
			t.Errorf("%s: %v", cond, err)
		}
	}
	err := joinError("r@s", &StanzaError{Type: "cancel", Condition: "item-not-found"})
	var se *StanzaError
	if !errors.As(err, &se) || errors.Is(err, ErrNickInUse) {
		t.Errorf("item-not-found: %v", err)
	}
}

func TestEncodeJoinAndForm(t *testing.T) {
	since := time.Date(2026, 12, 1, 7, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		got, want string
	}{
		{string(encodeJoin("r@s", "Zé <1>", "p&w", 0, time.Time{}, Presence{Show: "away", Status: "a<b"})), `<presence to="r@s/Zé &lt;1&gt;"><show>away</show><status>a&lt;b</status><x xmlns="http://jabber.org/protocol/muc"><password>p&amp;w</password></x></presence>`},
		{string(encodeJoin("r@s", "n", "", -1, time.Time{}, Presence{})), `<presence to="r@s/n"><x xmlns="http://jabber.org/protocol/muc"><history maxstanzas="0"/></x></presence>`},
		{string(encodeJoin("r@s", "n", "", 5, time.Time{}, Presence{})), `<presence to="r@s/n"><x xmlns="http://jabber.org/protocol/muc"><history maxstanzas="5"/></x></presence>`},
		{string(encodeJoin("r@s", "n", "", 5, since, Presence{})), `<presence to="r@s/n"><x xmlns="http://jabber.org/protocol/muc"><history since="2026-12-01T07:00:00Z"/></x></presence>`},
		{string(roomConfigForm("", false)), `<query xmlns="http://jabber.org/protocol/muc#owner"><x xmlns="jabber:x:data" type="submit"></x></query>`},
		{string(roomConfigForm("s", true)), `<query xmlns="http://jabber.org/protocol/muc#owner"><x xmlns="jabber:x:data" type="submit"><field var="FORM_TYPE"><value>http://jabber.org/protocol/muc#roomconfig</value></field><field var="muc#roomconfig_passwordprotectedroom"><value>1</value></field><field var="muc#roomconfig_roomsecret"><value>s</value></field><field var="muc#roomconfig_publicroom"><value>1</value></field></x></query>`},
	} {
		if tc.got != tc.want {
			t.Errorf("got  %s\nwant %s", tc.got, tc.want)
		}
	}
}

func TestParseDisco(t *testing.T) {
	items, err := parseDiscoItems([]byte(`<query xmlns="http://jabber.org/protocol/disco#items"><item jid="sala@conference.example.test" name="Sala"/><item jid="bad@@"/><item jid="x@y" node="n"/></query>`))
	if err != nil || len(items) != 1 || items[0] != (RoomItem{JID: "sala@conference.example.test", Name: "Sala"}) {
		t.Fatalf("items = %+v, %v", items, err)
	}
	if items, err := parseDiscoItems(nil); err != nil || len(items) != 0 {
		t.Fatalf("empty = %+v, %v", items, err)
	}
	if _, err := parseDiscoItems([]byte(`<query xmlns="other"/>`)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("wrong namespace: %v", err)
	}
	if !isMUCService([]byte(`<query xmlns="http://jabber.org/protocol/disco#info"><identity category="conference" type="text"/><feature var="http://jabber.org/protocol/muc"/></query>`)) {
		t.Error("MUC service not recognised")
	}
	if isMUCService([]byte(`<query xmlns="http://jabber.org/protocol/disco#info"><identity category="pubsub" type="service"/><feature var="http://jabber.org/protocol/muc"/></query>`)) {
		t.Error("pubsub taken for a MUC service")
	}
}

// FuzzMUCDisco: disco replies from the server decode without a panic.
func FuzzMUCDisco(f *testing.F) {
	f.Add(`<query xmlns="http://jabber.org/protocol/disco#items"><item jid="sala@conference.example.test" name="Sala"/></query>`)
	f.Add(`<query xmlns="http://jabber.org/protocol/disco#info"><identity category="conference" type="text"/><feature var="http://jabber.org/protocol/muc"/></query>`)
	f.Fuzz(func(t *testing.T, s string) {
		items, err := parseDiscoItems([]byte(s))
		if err == nil {
			for _, it := range items {
				if _, err := ParseJID(it.JID); err != nil {
					t.Fatalf("invalid JID %q accepted", it.JID)
				}
			}
		}
		isMUCService([]byte(s))
	})
}

// TestMUCRejoinScript: after a stream that could not be resumed the Conn
// joins its rooms again, asking for the history since shortly before the
// newest message, drops the repeats, and configures a room the server
// had lost; a room locked by someone else re-creating it is tried again.
func TestMUCRejoinScript(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	h := make(chanHandler, 200)
	c, sc := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
	const room = "sala@conference.example.test"
	type res struct {
		jr      JoinedRoom
		created bool
		err     error
	}
	ch := make(chan res, 1)
	go func() {
		jr, created, err := c.JoinRoom(t.Context(), RoomJoin{Room: room, Nick: "Alice", Password: "pw"})
		ch <- res{jr, created, err}
	}()
	p := sc.expect("presence")
	if p.get("to") != room+"/Alice" || p.child(nsMUC, "x").child(nsMUC, "password").text != "pw" {
		t.Fatalf("join presence to=%s", p.get("to"))
	}
	sc.write(`<presence from="sala@conference.example.test/Bob"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="none" role="participant"/></x></presence>`)
	sc.write(`<presence from="sala@conference.example.test/Alice"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="owner" role="moderator"/><status code="110"/><status code="201"/></x></presence>`)
	iq := sc.expect("iq")
	if iq.get("to") != room || iq.child(nsMUCOwner, "query").child(nsData, "x").get("type") != "submit" {
		t.Fatalf("no room configuration after 201: %+v", iq.name)
	}
	sc.write(`<iq type="result" id="` + iq.get("id") + `" from="` + room + `"/>`)
	r := <-ch
	if r.err != nil || !r.created || len(r.jr.Occupants) != 2 {
		t.Fatalf("JoinRoom = %+v %v %v", r.jr, r.created, r.err)
	}
	// Groupchat from a room we are not in is dropped; ours is delivered.
	sc.write(`<message type="groupchat" from="other@conference.example.test/X" id="o1"><body>spam</body></message>`)
	sc.write(`<message type="groupchat" from="sala@conference.example.test/Bob" id="m1"><body>um</body></message>`)
	sc.write(`<message type="groupchat" from="sala@conference.example.test/Alice" id="m2"><body>dois</body></message>`)
	m := h.wait(t, func(ev Event) bool { _, ok := ev.(*Message); return ok }).(*Message)
	if m.ID != "m1" || m.Own {
		t.Fatalf("first message %+v", m)
	}
	if m := h.wait(t, func(ev Event) bool { _, ok := ev.(*Message); return ok }).(*Message); m.ID != "m2" || !m.Own {
		t.Fatalf("own echo %+v", m)
	}

	// The stream breaks and cannot be resumed; the server had acked the
	// roster request, presence, join and configuration.
	sc.write(`<a xmlns="urn:xmpp:sm:3" h="4"/>`)
	sc.write(`<message type="groupchat" from="sala@conference.example.test/Bob" id="m0"><body>zero</body></message>`)
	h.wait(t, func(ev Event) bool { m, ok := ev.(*Message); return ok && m.ID == "m0" })
	sc.nc.Close()
	sc2 := s.accept()
	sc2.login()
	sc2.expect("resume")
	sc2.write(`<failed xmlns="urn:xmpp:sm:3"><item-not-found xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></failed>`)
	sc2.fresh("sm2")
	p = sc2.expect("presence")
	hist := p.child(nsMUC, "x").child(nsMUC, "history")
	since, err := time.Parse(time.RFC3339, hist.get("since"))
	if p.get("to") != room+"/Alice" || err != nil || time.Since(since) < rejoinMargin-5*time.Second || time.Since(since) > rejoinMargin+10*time.Second {
		t.Fatalf("re-join presence to=%s since=%q", p.get("to"), hist.get("since"))
	}
	// Someone else is re-creating the lost room: locked, then open.
	sc2.write(`<presence type="error" from="sala@conference.example.test/Alice"><error type="cancel"><item-not-found xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></presence>`)
	if p = sc2.expect("presence"); p.get("to") != room+"/Alice" {
		t.Fatalf("no retry of the locked room: to=%s", p.get("to"))
	}
	sc2.write(`<presence from="sala@conference.example.test/Alice"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="owner" role="moderator"/><status code="110"/><status code="201"/></x></presence>`)
	if iq := sc2.expect("iq"); iq.child(nsMUCOwner, "query") == nil {
		t.Fatal("the re-created room was not configured")
	}
	stamp := time.Now().UTC().Format(time.RFC3339)
	sc2.write(`<message type="groupchat" from="sala@conference.example.test/Bob" id="m1"><body>um</body><delay xmlns="urn:xmpp:delay" stamp="` + stamp + `"/></message>`)
	sc2.write(`<message type="groupchat" from="sala@conference.example.test/Bob" id="m3"><body>três</body><delay xmlns="urn:xmpp:delay" stamp="` + stamp + `"/></message>`)
	m = h.wait(t, func(ev Event) bool { _, ok := ev.(*Message); return ok }).(*Message)
	if m.ID != "m3" || m.Delay.IsZero() {
		t.Fatalf("after the re-join got %+v, want m3 (m1 is a repeat)", m)
	}
	if jrs := c.JoinedRooms(); len(jrs) != 1 || !jrs[0].Joined || jrs[0].Nick != "Alice" {
		t.Fatalf("JoinedRooms = %+v", jrs)
	}

	// Kicked: the room is forgotten and not joined again.
	sc2.write(`<presence type="unavailable" from="sala@conference.example.test/Alice"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="none" role="none"/><status code="307"/><status code="110"/></x></presence>`)
	o := h.wait(t, func(ev Event) bool { _, ok := ev.(*Occupant); return ok && ev.(*Occupant).Type == "unavailable" }).(*Occupant)
	if !o.Self || !o.Kicked {
		t.Fatalf("kick = %+v", o)
	}
	if jrs := c.JoinedRooms(); len(jrs) != 0 {
		t.Fatalf("JoinedRooms after the kick = %+v", jrs)
	}
	if _, err := c.Send(t.Context(), Message{To: room, Type: "groupchat", Body: "x"}); !errors.Is(err, ErrNotInRoom) {
		t.Fatalf("send after the kick: %v", err)
	}
}

// TestMUCJoinErrors: refusals become the documented sentinels and the room
// is not remembered.
func TestMUCJoinErrors(t *testing.T) {
	s := startScriptServer(t)
	c, sc := dialScript(t, s, make(chanHandler, 100), func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
	for cond, want := range map[string]error{"conflict": ErrNickInUse, "not-authorized": ErrRoomPassword, "forbidden": ErrRoomBanned, "registration-required": ErrRoomMembersOnly} {
		ch := make(chan error, 1)
		go func() {
			_, _, err := c.JoinRoom(t.Context(), RoomJoin{Room: "r@conference.example.test", Nick: "n"})
			ch <- err
		}()
		sc.expect("presence")
		sc.write(`<presence type="error" from="r@conference.example.test/n"><error type="cancel"><` + cond + ` xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></presence>`)
		if err := <-ch; !errors.Is(err, want) {
			t.Errorf("%s: %v", cond, err)
		}
		if len(c.JoinedRooms()) != 0 || c.InRoom("r@conference.example.test") {
			t.Errorf("%s: the room is remembered", cond)
		}
	}
	if _, _, err := c.JoinRoom(t.Context(), RoomJoin{Room: "conference.example.test", Nick: "n"}); !errors.Is(err, ErrInvalidJID) {
		t.Errorf("join a service: %v", err)
	}
	if _, _, err := c.JoinRoom(t.Context(), RoomJoin{Room: "r@conference.example.test", Nick: ""}); !errors.Is(err, ErrInvalidJID) {
		t.Errorf("join without a nick: %v", err)
	}
}

// TestMUCResumedKeepsRooms: a resumed stream never left its rooms, so
// nothing is sent to them again.
func TestMUCResumedKeepsRooms(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	h := make(chanHandler, 100)
	c, sc := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
	const room = "sala@conference.example.test"
	ch := make(chan error, 1)
	go func() {
		_, _, err := c.JoinRoom(t.Context(), RoomJoin{Room: room, Nick: "Alice"})
		ch <- err
	}()
	sc.expect("presence")
	sc.write(`<presence from="sala@conference.example.test/Alice"><x xmlns="http://jabber.org/protocol/muc#user"><item affiliation="member" role="participant"/><status code="110"/></x></presence>`)
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	sc.write(`<a xmlns="urn:xmpp:sm:3" h="3"/>`) // roster request, presence, join
	sc.write(`<r xmlns="urn:xmpp:sm:3"/>`)
	sc.expect("a")
	sc.nc.Close()
	h.wait(t, func(ev Event) bool { s, ok := ev.(*StateChange); return ok && s.State == StateReconnecting })
	sc2 := s.accept()
	sc2.login()
	sc2.expect("resume")
	sc2.write(`<resumed xmlns="urn:xmpp:sm:3" previd="sm1" h="3"/>`)
	h.wait(t, func(ev Event) bool { s, ok := ev.(*StateChange); return ok && s.State == StateOnline && s.Resumed })
	if _, err := c.Send(t.Context(), Message{To: room, Type: "groupchat", ID: "after", Body: "still here"}); err != nil {
		t.Fatal(err)
	}
	if m := sc2.expect("message"); m.get("id") != "after" {
		t.Fatalf("after resumption the server got %s %s first", m.name.Local, m.get("to"))
	}
	if jrs := c.JoinedRooms(); len(jrs) != 1 || !jrs[0].Joined {
		t.Fatalf("JoinedRooms after resumption = %+v", jrs)
	}
}
