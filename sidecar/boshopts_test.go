package sidecar

import (
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// keyChain is a XEP-0124 §15 key sequence: keys[i] = hex(SHA-1(keys[i-1])),
// used from the last towards the first.
type keyChain struct{ keys []string }

func newKeyChain(seed string, n int) *keyChain {
	k := &keyChain{}
	cur := seed
	for range n {
		sum := sha1.Sum([]byte(cur))
		cur = hex.EncodeToString(sum[:])
		k.keys = append(k.keys, cur)
	}
	return k
}

// next takes the next key to send (K(n) first, as newkey).
func (k *keyChain) next() string {
	last := k.keys[len(k.keys)-1]
	k.keys = k.keys[:len(k.keys)-1]
	return last
}

// keyedTab opens a BOSH session with key sequencing and logs in, every
// request with its key.
func keyedTab(t *testing.T, h *harness, srv string, chain *keyChain) *BOSHClient {
	t.Helper()
	c := NewBOSHClient(t, srv+"/http-bind", "Cookie", "sessionid="+goodID, "Origin", srv)
	st, b := c.Post(t.Context(), `<body xmlns="http://jabber.org/protocol/httpbind" xmlns:xmpp="urn:xmpp:xbosh" hold="1" rid="`+
		strconv.FormatInt(c.RID, 10)+`" to="example.test" ver="1.6" wait="3" xmpp:version="1.0" newkey="`+chain.next()+`"/>`)
	if st != http.StatusOK || b.attrs["sid"] == "" {
		t.Fatalf("keyed session creation: %d %s", st, c.Last)
	}
	c.SID = b.attrs["sid"]
	plain := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00x"))
	if b := c.Send(`key="`+chain.next()+`"`, `<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">`+plain+`</auth>`); len(b.kids) != 1 || b.kids[0].name.Local != "success" {
		t.Fatalf("keyed auth: %s", c.Last)
	}
	c.Send(`key="`+chain.next()+`" xmpp:restart="true"`, "")
	c.Send(`key="`+chain.next()+`"`, `<iq xmlns="jabber:client" type="set" id="bind1"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></iq>`)
	if !strings.Contains(c.Last, "<jid>") {
		t.Fatalf("keyed bind: %s", c.Last)
	}
	return c
}

func TestBOSHKeySequencing(t *testing.T) {
	h, srv := boshHarness(t)
	msg := func(body string) string {
		return `<message xmlns="jabber:client" to="bob@example.test" type="chat"><body>` + body + `</body></message>`
	}
	sent := func(body string) bool {
		for _, s := range h.conn.stanzaLog() {
			if strings.Contains(s, ">"+body+"<") {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		name string
		// attack sends the bad request after a good one with key good.
		attack func(c *BOSHClient, chain *keyChain, good string) *boshBody
	}{
		{"a wrong key", func(c *BOSHClient, chain *keyChain, _ string) *boshBody {
			return c.Send(`key="`+strings.Repeat("ab", 20)+`"`, msg("forged"))
		}},
		{"no key", func(c *BOSHClient, chain *keyChain, _ string) *boshBody {
			return c.Send("", msg("forged"))
		}},
		{"a key used before, with a new rid", func(c *BOSHClient, chain *keyChain, good string) *boshBody {
			return c.Send(`key="`+good+`"`, msg("forged"))
		}},
		{"a replay of the last rid with another key", func(c *BOSHClient, chain *keyChain, good string) *boshBody {
			c.RID--
			return c.Send(`key="`+chain.next()+`"`, msg("forged"))
		}},
		{"a newkey that is not a key", func(c *BOSHClient, chain *keyChain, _ string) *boshBody {
			return c.Send(`key="`+chain.next()+`" newkey="zz"`, msg("forged"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chain := newKeyChain("seed "+tc.name, 20)
			c := keyedTab(t, h, srv.URL, chain)
			good := chain.next()
			c.Send(`key="`+good+`"`, msg("genuine"))
			if !sent("genuine") {
				t.Fatalf("a message with the right key was not sent: %q", h.conn.stanzaLog())
			}
			// The right key again for the same rid: a retransmission,
			// answered as before.
			c.RID--
			if b := c.Send(`key="`+good+`"`, msg("genuine")); b.attrs["type"] == "terminate" {
				t.Fatalf("a retransmission with its own key: %s", c.Last)
			}
			b := tc.attack(c, chain, good)
			if b.attrs["type"] != "terminate" || b.attrs["condition"] != "item-not-found" {
				t.Fatalf("answered %s", c.Last)
			}
			if sent("forged") {
				t.Fatal("the payload of a request with a bad key was sent")
			}
			if h.bosh().get(c.SID) != nil {
				t.Fatal("the session outlived a bad key")
			}
			if h.conn.isClosed() {
				t.Fatal("a bad key closed the user's stream")
			}
		})
	}
	t.Run("switching to a new sequence", func(t *testing.T) {
		chain := newKeyChain("first", 6)
		c := keyedTab(t, h, srv.URL, chain)
		c.Send(`key="`+chain.next()+`"`, "")
		last := chain.next() // K(1)
		if len(chain.keys) != 0 {
			t.Fatalf("chain not used up: %d left", len(chain.keys))
		}
		chain2 := newKeyChain("second", 5)
		c.Send(`key="`+last+`" newkey="`+chain2.next()+`"`, "")
		if b := c.Send(`key="`+chain2.next()+`"`, msg("after the switch")); b.attrs["type"] == "terminate" {
			t.Fatalf("a key of the new sequence: %s", c.Last)
		}
		if !sent("after the switch") {
			t.Fatal("not sent after the switch")
		}
	})
	// A creation request with a newkey that is not one: bad-request.
	c := NewBOSHClient(t, srv.URL+"/http-bind", "Cookie", "sessionid="+goodID, "Origin", srv.URL)
	if _, b := c.Post(t.Context(), `<body xmlns="http://jabber.org/protocol/httpbind" rid="9" to="example.test" wait="3" hold="1" newkey="x"/>`); b == nil || b.attrs["condition"] != "bad-request" {
		t.Fatalf("a bad newkey at creation: %s", c.Last)
	}
}

func TestBOSHPause(t *testing.T) {
	h, srv := boshHarness(t)
	c := h.newBOSH(srv, goodID)
	b := c.Create("example.test")
	if b.attrs["maxpause"] != "120" {
		t.Fatalf("maxpause = %q, want 120: %s", b.attrs["maxpause"], c.Last)
	}
	c.Login("alice", "x")
	bs := h.bosh().get(c.SID)

	// A held poll, then the pause: both answer at once.
	c.Wait = 50
	poll := c.RID + 1
	var wg sync.WaitGroup
	wg.Add(1)
	start := time.Now()
	go func() {
		defer wg.Done()
		c.Post(t.Context(), `<body xmlns="http://jabber.org/protocol/httpbind" rid="`+strconv.FormatInt(poll, 10)+`" sid="`+c.SID+`"/>`)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for bs.heldCount() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the poll was not held")
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="p0"><body>antes da pausa</body></message>`)
	time.Sleep(100 * time.Millisecond)
	c.RID = poll
	b = c.Send(`pause="90"`, "")
	wg.Wait()
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("the held poll answered after %v, not at the pause", took)
	}
	if len(b.kids) != 0 || b.attrs["type"] == "terminate" {
		t.Fatalf("the pause answered %s", c.Last)
	}
	// Paused: silent past the inactivity period, still there.
	bs.mu.Lock()
	bs.lastSeen = time.Now().Add(-boshInactivity - time.Second)
	bs.mu.Unlock()
	bs.idleCheck()
	if h.bosh().get(c.SID) == nil {
		t.Fatal("a paused session was detached after the inactivity period")
	}
	// The next request ends the pause; a silent session is then detached
	// after the normal inactivity period.
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="p1"><body>depois da pausa</body></message>`)
	c.Wait = 3
	c.WaitFor(5*time.Second, "the message after the pause", func(s string) bool { return strings.Contains(s, "depois da pausa") })
	bs.mu.Lock()
	bs.lastSeen = time.Now().Add(-boshInactivity - time.Second)
	bs.mu.Unlock()
	bs.idleCheck()
	if h.bosh().get(c.SID) != nil {
		t.Fatal("the pause outlived the next request")
	}

	// Hostile: a pause over maxpause, or not a number, ends the session
	// (policy-violation) and sends nothing of its payload.
	for _, pause := range []string{"121", "99999999999999999999", "-1", "soon"} {
		c := h.tab(srv)
		b := c.Send(`pause="`+pause+`"`, `<message xmlns="jabber:client" to="bob@example.test"><body>pausa `+pause+`</body></message>`)
		if b.attrs["type"] != "terminate" || b.attrs["condition"] != "policy-violation" {
			t.Fatalf("pause %s answered %s", pause, c.Last)
		}
		if h.bosh().get(c.SID) != nil {
			t.Fatalf("pause %s: the session was kept", pause)
		}
		for _, s := range h.conn.stanzaLog() {
			if strings.Contains(s, "pausa "+pause) {
				t.Fatalf("pause %s: its payload was sent", pause)
			}
		}
		if st, _ := c.Post(t.Context(), `<body xmlns="http://jabber.org/protocol/httpbind" rid="`+strconv.FormatInt(c.RID+1, 10)+`" sid="`+c.SID+`"/>`); st != http.StatusNotFound {
			t.Fatalf("pause %s: the sid still answers %d", pause, st)
		}
	}
}
