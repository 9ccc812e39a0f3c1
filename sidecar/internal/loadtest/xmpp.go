package loadtest

import (
	"context"
	"encoding/base64"
	"fmt"
)

// framer carries XMPP elements for the BOSH and WebSocket clients during
// login: send writes one payload (BOSH: one request; restart asks for a
// stream restart) and returns what came back at once; recv waits for more.
type framer interface {
	send(ctx context.Context, payload string, restart bool) ([]element, error)
	recv(ctx context.Context) ([]element, error)
}

// await sends payload and receives until match accepts an element, at most
// 20 rounds (the server answers each login step in one or two).
func await(ctx context.Context, f framer, payload string, restart bool, what string, match func(*element) (bool, error)) error {
	els, err := f.send(ctx, payload, restart)
	for round := 0; ; round++ {
		if err != nil {
			return fmt.Errorf("loadtest: waiting for %s: %w", what, err)
		}
		for i := range els {
			if ok, err := match(&els[i]); ok || err != nil {
				return err
			}
		}
		if round == 20 {
			return fmt.Errorf("loadtest: no %s after %d rounds", what, round)
		}
		els, err = f.recv(ctx)
	}
}

func named(local string) func(*element) (bool, error) {
	return func(e *element) (bool, error) { return e.XMLName.Local == local, nil }
}

func iqResult(id string) func(*element) (bool, error) {
	return func(e *element) (bool, error) {
		if e.XMLName.Local != "iq" || e.attr("id") != id {
			return false, nil
		}
		if e.attr("type") != "result" {
			return false, fmt.Errorf("loadtest: iq %s answered type=%s", id, e.attr("type"))
		}
		return true, nil
	}
}

// xmppLogin runs SASL PLAIN, the stream restart, resource binding, the
// legacy session and the initial presence over f; the first stream
// features must have been read already.
func xmppLogin(ctx context.Context, f framer, user, pass, resource string) error {
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	err := await(ctx, f, `<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">`+plain+`</auth>`, false, "SASL outcome",
		func(e *element) (bool, error) {
			switch e.XMLName.Local {
			case "success":
				return true, nil
			case "failure":
				return false, saslFailure(e)
			}
			return false, nil
		})
	if err != nil {
		return err
	}
	if err := await(ctx, f, "", true, "features after restart", named("features")); err != nil {
		return err
	}
	bind := `<iq xmlns="jabber:client" type="set" id="bind"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>` + escape(resource) + `</resource></bind></iq>`
	if err := await(ctx, f, bind, false, "bind result", iqResult("bind")); err != nil {
		return err
	}
	sess := `<iq xmlns="jabber:client" type="set" id="sess"><session xmlns="urn:ietf:params:xml:ns:xmpp-session"/></iq>`
	if err := await(ctx, f, sess, false, "session result", iqResult("sess")); err != nil {
		return err
	}
	_, err = f.send(ctx, `<presence xmlns="jabber:client"/>`, false)
	return err
}

// chat renders a chat message stanza.
func chat(to, body string) string {
	return `<message xmlns="jabber:client" type="chat" to="` + escape(to) + `"><body>` + escape(body) + `</body></message>`
}
