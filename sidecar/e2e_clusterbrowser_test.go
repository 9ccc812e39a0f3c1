package sidecar_test

import (
	"encoding/base64"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"expressolivre.org/imsidecar/sidecar"
	"expressolivre.org/imsidecar/xmppconn"
)

// Browser streams in cluster mode: BOSH requests and WebSockets reaching
// any node are served by the node owning the PHP session, through the
// peer listener.

// browserBalancer is round robin over the nodes with no timeout on the
// answer's headers: a held BOSH request waits for its wait.
func (rig *clusterRig) browserBalancer() *balancer {
	lb := newBalancer(rig.api)
	lb.base = &http.Transport{MaxIdleConnsPerHost: 8}
	return lb
}

// owner returns the index of the one node holding a lease, failing if
// there is not exactly one.
func (rig *clusterRig) owner(t *testing.T) int {
	t.Helper()
	owner := -1
	for i, d := range rig.Nodes {
		if rig.clusterMetric(t, "imsidecar_cluster_leases", d) == 1 {
			if owner >= 0 {
				t.Fatalf("nodes %d and %d both hold a lease", owner, i)
			}
			owner = i
		}
	}
	if owner < 0 {
		t.Fatal("no node holds the lease")
	}
	return owner
}

// clusterPage opens a BOSH session for u's cookie through lb, as a page
// behind the site's balancer would (Origin and X-Forwarded-Host are the
// site's), and logs in.
func (rig *clusterRig) clusterPage(t *testing.T, lb *balancer, u *user) *sidecar.BOSHClient {
	t.Helper()
	c := sidecar.NewBOSHClient(t, "http://balancer/http-bind", "Cookie", "sessionid="+u.SID,
		"Origin", "https://intranet.example", "X-Forwarded-Host", "intranet.example").Via(lb)
	c.Create(rig.e.XMPP.Domain)
	rig.e.secrets = append(rig.e.secrets, c.SID)
	if jid := c.Login(u.Name, "placeholder"); !strings.HasPrefix(jid, u.Bare+"/") {
		t.Fatalf("bound %q", jid)
	}
	c.Send("", `<presence xmlns="jabber:client"/>`)
	return c
}

// TestClusterBrowser: a BOSH client whose requests go round robin over
// three nodes chats with a desktop contact, nothing lost or duplicated,
// on one stream; a WebSocket opened on a node that does not own the
// session works; a sid of another PHP session, a forged sid, a foreign
// Origin and a peer request without the secret are refused.
func TestClusterBrowser(t *testing.T) {
	rig := startClusterRig(t, 3, 3*time.Second)
	lb := rig.browserBalancer()
	rig.e.register(t, "cbw", "cbx", "cbdesk")
	rig.e.XMPP.Befriend(t, "cbw", "cbdesk")
	desk := dialDesktop(t, rig.e.XMPP, "cbdesk")
	alice, mallory := rig.e.login(t, "cbw"), rig.e.login(t, "cbx")
	page := rig.clusterPage(t, lb, alice)
	owner := rig.owner(t)
	other := (owner + 1) % 3
	if len(page.SID) != 40+64 {
		t.Fatalf("a cluster sid has %d characters, want 160 random bits and a session key in hex", len(page.SID))
	}

	// Both ways, 20 messages each, every request through the next node.
	const n = 20
	ctx := t.Context()
	for i := range n {
		if _, err := desk.Conn.Send(ctx, xmppconn.Message{To: alice.Bare, Type: "chat", Body: fmt.Sprintf("d2b-%d", i)}); err != nil {
			t.Fatal(err)
		}
		page.Send("", `<message xmlns="jabber:client" to="`+desk.Bare+`" type="chat"><body>b2d-`+strconv.Itoa(i)+`</body></message>`)
	}
	for i := range n {
		body := fmt.Sprintf(">d2b-%d<", i)
		page.WaitFor(15*time.Second, body, func(s string) bool { return strings.Contains(s, body) })
	}
	for range 3 {
		page.Send("", "")
	}
	dup := page.Count(func(s string) bool { return strings.Contains(s, ">d2b-") })
	got := map[string]int{}
	deadline := time.After(15 * time.Second)
	for len(got) < n {
		select {
		case ev := <-desk.events:
			if m, ok := ev.(*xmppconn.Message); ok && strings.HasPrefix(m.Body, "b2d-") {
				got[m.Body]++
			}
		case <-deadline:
			t.Fatalf("the desktop contact got %d of %d messages", len(got), n)
		}
	}
	time.Sleep(time.Second)
	for len(desk.events) > 0 {
		if m, ok := (<-desk.events).(*xmppconn.Message); ok && strings.HasPrefix(m.Body, "b2d-") {
			got[m.Body]++
		}
	}
	for b, k := range got {
		if k != 1 {
			dup += k - 1
			t.Errorf("%s reached the desktop %d times", b, k)
		}
	}
	if dup != 0 {
		t.Errorf("%d duplicated messages", dup)
	}
	forwarded := rig.clusterMetric(t, `imsidecar_cluster_forwards_total{result="ok"}`)
	if forwarded < n/2 {
		t.Errorf("%v requests forwarded to the owner: the balancer sent most to the others", forwarded)
	}
	if c := rig.clusterMetric(t, "imsidecar_connects_total"); c != 1 {
		t.Errorf("the nodes opened %v streams, want 1", c)
	}
	if a := rig.e.XMPP.AuthSuccesses("cbw"); a != 1 {
		t.Errorf("%d logins at Prosody, want 1", a)
	}
	t.Logf("BOSH round robin over 3 nodes: %d messages each way, 0 lost, %d duplicated; %v requests forwarded to node%d", n, dup, forwarded, owner)

	// A WebSocket opened on a node that does not own the session.
	nonOwner := rig.Nodes[other]
	ws := dialClusterWS(t, nonOwner.URL, nonOwner.URL, alice.SID)
	dom := rig.e.XMPP.Domain
	ws.login(dom, alice)
	if _, err := desk.Conn.Send(ctx, xmppconn.Message{To: alice.Bare, Type: "chat", Body: "para o websocket"}); err != nil {
		t.Fatal(err)
	}
	ws.waitFor("the desktop's message", contains("para o websocket"))
	ws.send(`<message xmlns="jabber:client" to="` + desk.Bare + `" type="chat"><body>pelo websocket</body></message>`)
	desk.waitFor(t, 15*time.Second, "the WebSocket's message", func(ev xmppconn.Event) bool {
		m, ok := ev.(*xmppconn.Message)
		return ok && m.Body == "pelo websocket"
	})
	page.WaitFor(15*time.Second, "the message on the BOSH tab too", contains("para o websocket"))
	if c := rig.clusterMetric(t, "imsidecar_connects_total"); c != 1 {
		t.Errorf("the nodes opened %v streams, want 1", c)
	}

	// Hostile.
	post := func(node int, cookieSID, origin, body string) (int, string) {
		t.Helper()
		hdr := []string{"Origin", origin}
		if cookieSID != "" {
			hdr = append(hdr, "Cookie", "sessionid="+cookieSID)
		}
		c := sidecar.NewBOSHClient(t, rig.Nodes[node].URL+"/http-bind", hdr...)
		st, _ := c.Post(ctx, body)
		return st, c.Last
	}
	onSID := func(sid string) string {
		return `<body xmlns="http://jabber.org/protocol/httpbind" rid="` + strconv.FormatInt(page.RID+1, 10) + `" sid="` + sid + `"/>`
	}
	nodeURL := rig.Nodes[other].URL
	// mallory's cookie with alice's sid, through a node that does not
	// own alice's session: refused by the owner, as on one node.
	if st, body := post(other, mallory.SID, nodeURL, onSID(page.SID)); st != http.StatusOK || !strings.Contains(body, `condition="item-not-found"`) {
		t.Errorf("another session's sid through node%d: %d %s", other, st, body)
	}
	// A sid forged from alice's (other random bits): no such session.
	forged := strings.Repeat("0", 40) + page.SID[40:]
	if st, body := post(other, "", nodeURL, onSID(forged)); st != http.StatusNotFound || !strings.Contains(body, "item-not-found") {
		t.Errorf("a forged sid through node%d: %d %s", other, st, body)
	}
	// A foreign Origin, at the node that does not own the session.
	create := `<body xmlns="http://jabber.org/protocol/httpbind" rid="5" to="` + dom + `" wait="3" hold="1"/>`
	if st, body := post(other, alice.SID, "https://evil.example", create); st != http.StatusForbidden {
		t.Errorf("a foreign Origin (BOSH) at node%d: %d %s", other, st, body)
	}
	hdr := http.Header{"Origin": {"https://evil.example"}, "Cookie": {"sessionid=" + alice.SID}}
	if _, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(nodeURL, "http")+"/xmpp-websocket",
		&websocket.DialOptions{Subprotocols: []string{"xmpp"}, HTTPHeader: hdr}); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("a foreign Origin (WebSocket) at node%d: %v %v", other, resp, err)
	}
	// The owner's peer listener without the secret.
	refusedBefore := rig.clusterMetric(t, "imsidecar_cluster_peer_refused_total")
	peerURL := "http://" + rig.peers[owner]
	c := sidecar.NewBOSHClient(t, peerURL+"/http-bind", "Cookie", "sessionid="+alice.SID, "Origin", peerURL)
	if st, _ := c.Post(ctx, onSID(page.SID)); st != http.StatusUnauthorized || !strings.Contains(c.Last, "peer_unauthorized") {
		t.Errorf("BOSH at the peer listener without the secret: %d %s", st, c.Last)
	}
	hdr = http.Header{"Origin": {peerURL}, "Cookie": {"sessionid=" + alice.SID}}
	if _, resp, err := websocket.Dial(ctx, "ws://"+rig.peers[owner]+"/xmpp-websocket",
		&websocket.DialOptions{Subprotocols: []string{"xmpp"}, HTTPHeader: hdr}); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a WebSocket at the peer listener without the secret: %v %v", resp, err)
	}
	if got := rig.clusterMetric(t, "imsidecar_cluster_peer_refused_total") - refusedBefore; got != 2 {
		t.Errorf("peer_refused_total grew by %v, want 2", got)
	}
	// alice's tabs are untouched by all of it.
	if _, err := desk.Conn.Send(ctx, xmppconn.Message{To: alice.Bare, Type: "chat", Body: "ainda aqui"}); err != nil {
		t.Fatal(err)
	}
	ws.waitFor("the WebSocket after the hostile requests", contains("ainda aqui"))
	page.WaitFor(15*time.Second, "the BOSH tab after the hostile requests", contains("ainda aqui"))
}

// login runs an RFC 7395 page's login on the WebSocket for u (SASL PLAIN
// with a placeholder password: the sidecar logs in with the session's),
// binds, and sends the initial presence.
func (c *wsClient) login(domain string, u *user) {
	c.t.Helper()
	c.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="` + domain + `" version="1.0"/>`)
	c.waitFor("SASL features", contains("<mechanism>PLAIN</mechanism>"))
	c.send(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">` + base64.StdEncoding.EncodeToString([]byte("\x00"+u.Name+"\x00x")) + `</auth>`)
	c.waitFor("success", contains("<success"))
	c.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="` + domain + `" version="1.0"/>`)
	c.waitFor("bind features", contains("xmpp-bind"))
	c.send(`<iq xmlns="jabber:client" type="set" id="b"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></iq>`)
	c.waitFor("bound", contains("<jid>"+u.Bare+"/"))
	c.send(`<presence xmlns="jabber:client"/>`)
}

// dialClusterWS opens an RFC 7395 WebSocket at base with origin and the
// PHP session cookie.
func dialClusterWS(t *testing.T, base, origin, cookieSID string) *wsClient {
	t.Helper()
	c, _, err := dialWSAt(t, base, origin, cookieSID)
	if err != nil {
		t.Fatalf("websocket at %s: %v", base, err)
	}
	return c
}

// browserKill is where the owner-kill tests start: a three-node rig, a
// desktop contact, and a BOSH page of the user's, through a round-robin
// balancer, that has taken a first message ("antes") from the contact.
type browserKill struct {
	t     *testing.T
	rig   *clusterRig
	lb    *balancer
	desk  *desktop
	alice *user
	page  *sidecar.BOSHClient
}

// startBrowserKill registers name, deskName and others, befriends name
// and deskName, and opens name's page.
func startBrowserKill(t *testing.T, name, deskName string, others ...string) *browserKill {
	t.Helper()
	k := &browserKill{t: t, rig: startClusterRig(t, 3, 3*time.Second)}
	k.lb = k.rig.browserBalancer()
	k.rig.e.register(t, append([]string{name, deskName}, others...)...)
	k.rig.e.XMPP.Befriend(t, name, deskName)
	k.desk = dialDesktop(t, k.rig.e.XMPP, deskName)
	k.alice = k.rig.e.login(t, name)
	k.page = k.rig.clusterPage(t, k.lb, k.alice)
	k.say("antes")
	k.page.WaitFor(15*time.Second, "the message before the owner goes", contains(">antes<"))
	return k
}

// say sends body from the desktop contact to the user.
func (k *browserKill) say(body string) {
	k.t.Helper()
	if _, err := k.desk.Conn.Send(k.t.Context(), xmppconn.Message{To: k.alice.Bare, Type: "chat", Body: body}); err != nil {
		k.t.Fatal(err)
	}
}

// reattach opens the user's next page, killed being when the owner was
// killed, and waits there for the messages prefix-0 … prefix-(n-1); after
// three more requests it reports how long after the kill the page was
// served, how many of those messages came twice, and how many times the
// first message came again.
func (k *browserKill) reattach(killed time.Time, prefix string, n int) (page *sidecar.BOSHClient, served time.Duration, dup, again int) {
	k.t.Helper()
	page = k.rig.clusterPage(k.t, k.lb, k.alice)
	served = time.Since(killed)
	for i := range n {
		body := fmt.Sprintf(">%s-%d<", prefix, i)
		page.WaitFor(20*time.Second, body, contains(body))
	}
	for range 3 {
		page.Send("", "")
	}
	return page, served, page.Count(contains(">" + prefix + "-")), page.Count(contains(">antes<"))
}

// ownerAndSurvivors returns the one node holding a lease and the others.
func (rig *clusterRig) ownerAndSurvivors(t *testing.T) (*daemon, []*daemon) {
	t.Helper()
	vi := rig.owner(t)
	return rig.Nodes[vi], append(slices.Clone(rig.Nodes[:vi]), rig.Nodes[vi+1:]...)
}

// TestClusterBrowserKillOwner: the node holding a BOSH page's session is
// killed (SIGKILL). The page's next request, through another node, is
// answered item-not-found (its BOSH session died with the node); the page
// opens a new one through the next node, which takes the session over
// with a fresh login, and gets the messages its contact sent meanwhile,
// each once.
func TestClusterBrowserKillOwner(t *testing.T) {
	k := startBrowserKill(t, "cbk", "cbkdesk", "cbkx")
	rig, desk, page, say := k.rig, k.desk, k.page, k.say
	mallory := rig.e.login(t, "cbkx")
	ctx := t.Context()
	// Two more requests (hold=1): the page had the answer that carried
	// "antes" back before sending the second, which acknowledges it.
	page.Send("", "")
	page.Send("", "")
	victim, survivors := rig.ownerAndSurvivors(t)
	// Three messages reach the owner (its event log has them, so they are
	// in Redis with their count) and one answer carries them all; the
	// owner dies before the page's next request acknowledges it.
	const m = 3
	for i := range m {
		say(fmt.Sprintf("lido-%d", i))
	}
	waitOwnerLog(t, victim.client(k.alice.SID), "lido-", m)
	page.Send("", "")
	if got := page.Count(contains(">lido-")); got != m {
		t.Fatalf("the answer before the kill carried %d of the %d messages: %q", got, m, page.Got)
	}
	drainDesktop(desk)
	victim.Signal(t, syscall.SIGKILL, 5*time.Second)
	killed := time.Now()
	const n = 5
	for i := range n {
		say(fmt.Sprintf("durante-%d", i))
	}
	page.RID++
	st, _ := page.Post(ctx, `<body xmlns="http://jabber.org/protocol/httpbind" rid="`+strconv.FormatInt(page.RID, 10)+`" sid="`+page.SID+`"/>`)
	if st != http.StatusNotFound || !strings.Contains(page.Last, "item-not-found") {
		t.Fatalf("the dead node's sid through another node: %d %s", st, page.Last)
	}
	// Hostile, on a surviving node: another PHP session's cookie with the
	// dead page's sid, and a forged sid (other random bits before alice's
	// session key), get nothing of the unacknowledged answer.
	other := survivors[0]
	forged := strings.Repeat("0", 40) + page.SID[40:]
	for _, probe := range []struct{ what, cookie, sid string }{
		{"another session's cookie with the dead page's sid", mallory.SID, page.SID},
		{"a forged sid", k.alice.SID, forged},
	} {
		thief := sidecar.NewBOSHClient(t, other.URL+"/http-bind", "Cookie", "sessionid="+probe.cookie, "Origin", other.URL)
		st, _ := thief.Post(ctx, `<body xmlns="http://jabber.org/protocol/httpbind" rid="`+strconv.FormatInt(page.RID+1, 10)+`" sid="`+probe.sid+`"/>`)
		if st == http.StatusOK && !strings.Contains(thief.Last, "terminate") || strings.Contains(thief.Last, "lido-") {
			t.Errorf("%s: %d %s", probe.what, st, thief.Last)
		}
	}
	page2, served, dup, again := k.reattach(killed, "durante", n)
	for i := range m {
		if got := page2.Count(contains(fmt.Sprintf(">lido-%d<", i))); got != 1 {
			t.Errorf("the new page got lido-%d, which the unacknowledged answer carried, %d times, want once", i, got)
		}
	}
	if dup != 0 || again != 0 {
		t.Errorf("%d messages sent during the outage arrived twice; the acknowledged one came again %d times", dup, again)
	}
	if a := rig.e.XMPP.AuthSuccesses("cbk"); a != 2 {
		t.Errorf("%d authentications at Prosody, want 2 (the first login and the takeover's resumption)", a)
	}
	flap := unavailableSeen(desk)
	if flap != 0 {
		t.Errorf("the desktop contact saw %d unavailable presences: the takeover did not resume the session", flap)
	}
	if got := rig.clusterMetric(t, `imsidecar_cluster_resumes_total{result="resumed"}`, survivors...); got != 1 {
		t.Errorf("%v sessions resumed, want 1", got)
	}
	page2.Send("", `<message xmlns="jabber:client" to="`+desk.Bare+`" type="chat"><body>voltei</body></message>`)
	desk.waitFor(t, 15*time.Second, "the page's message after the takeover", func(ev xmppconn.Event) bool {
		m, ok := ev.(*xmppconn.Message)
		return ok && m.Body == "voltei"
	})
	t.Logf("kill -9 of the owner of a BOSH page: %d messages of the answer the page had not acknowledged and %d sent meanwhile, 0 lost, %d duplicated; the acknowledged message before the kill came again %d times; the page served again on a new BOSH session %v after the kill (the XMPP session resumed); the desktop contact saw %d unavailable",
		m, n, dup, again, served.Round(10*time.Millisecond), flap)
}

// TestClusterBrowserHeldKillOwner: messages that arrive while the user's
// page is away (its BOSH session ended, as on a reload) are kept for the
// next page in Redis too; the node holding them is killed (SIGKILL)
// before the page comes back; the new page, through another node, gets
// each of them once and nothing it had already taken. Another PHP
// session's page, and its cookie with the dead page's sid, get nothing
// of them.
func TestClusterBrowserHeldKillOwner(t *testing.T) {
	k := startBrowserKill(t, "cbh", "cbhdesk", "cbhx")
	rig, lb, desk, alice, page, say := k.rig, k.lb, k.desk, k.alice, k.page, k.say
	mallory := rig.e.login(t, "cbhx")
	ctx := t.Context()
	// The page goes away (a reload's unload: terminate, no unavailable).
	if b := page.Send(`type="terminate"`, ""); b.Attr("type") != "terminate" {
		t.Fatalf("terminate: %s", page.Last)
	}
	victim, survivors := rig.ownerAndSurvivors(t)
	const n = 3
	for i := range n {
		say(fmt.Sprintf("sozinho-%d", i))
	}
	// Wait until the owner has them (in its event log, so written to
	// Redis with their count), then kill it before any page comes back.
	waitOwnerLog(t, victim.client(alice.SID), "sozinho-", n)
	drainDesktop(desk)
	victim.Signal(t, syscall.SIGKILL, 5*time.Second)
	killed := time.Now()

	// Hostile: another PHP session's cookie with the dead page's sid, and
	// another PHP session's page, on the surviving nodes.
	other := survivors[0]
	thief := sidecar.NewBOSHClient(t, other.URL+"/http-bind", "Cookie", "sessionid="+mallory.SID, "Origin", other.URL)
	st, _ := thief.Post(ctx, `<body xmlns="http://jabber.org/protocol/httpbind" rid="`+strconv.FormatInt(page.RID+1, 10)+`" sid="`+page.SID+`"/>`)
	if st == http.StatusOK && !strings.Contains(thief.Last, "terminate") || strings.Contains(thief.Last, "sozinho-") {
		t.Errorf("another session's cookie with the dead node's sid: %d %s", st, thief.Last)
	}
	mpage := rig.clusterPage(t, lb, mallory)

	_, served, dup, again := k.reattach(killed, "sozinho", n)
	for range 3 {
		mpage.Send("", "")
	}
	if dup != 0 || again != 0 {
		t.Errorf("the new page got %d of the held messages twice and the one taken before %d times", dup, again)
	}
	if leak := mpage.Count(contains("sozinho-")); leak != 0 {
		t.Errorf("another PHP session's page got %d of alice's messages", leak)
	}
	if flap := unavailableSeen(desk); flap != 0 {
		t.Errorf("the desktop contact saw %d unavailable presences", flap)
	}
	if got := rig.clusterMetric(t, `imsidecar_cluster_resumes_total{result="resumed"}`, survivors...); got < 1 {
		t.Errorf("%v sessions resumed, want alice's", got)
	}
	t.Logf("kill -9 of the node holding %d messages for a page that was away: the next page, %v after the kill, got each once, the message it had taken 0 times; another session's page and cookie got nothing",
		n, served.Round(10*time.Millisecond))
}

// TestClusterBrowserWebSocketKillOwner: what a WebSocket wrote stays in
// Redis until the browser answers the ping sent after it (wsack.go). A
// WebSocket, through a node that does not own the session, gets three
// messages and its library answers the ping: Redis forgets them. It gets
// three more and withholds the pong, as when the frames are still in
// flight; forged pongs (unsolicited, empty, garbage, numbers never sent,
// the answered ping's again) acknowledge none of them. The owner is
// killed (SIGKILL); the page's next WebSocket, through another node, gets
// the three unanswered messages and those sent meanwhile, each once, and
// none the answered ping covered.
func TestClusterBrowserWebSocketKillOwner(t *testing.T) {
	k := startBrowserKill(t, "cwk", "cwkdesk")
	rig, desk, page, alice, say := k.rig, k.desk, k.page, k.alice, k.say
	dom := rig.e.XMPP.Domain
	// The BOSH page acknowledges "antes" (two more requests, hold=1) and
	// goes: the WebSocket is the user's only stream.
	page.Send("", "")
	page.Send("", "")
	if b := page.Send(`type="terminate"`, ""); b.Attr("type") != "terminate" {
		t.Fatalf("terminate: %s", page.Last)
	}
	victim, survivors := rig.ownerAndSurvivors(t)
	owner := victim.client(alice.SID)
	ws := dialClusterWS(t, survivors[0].URL, survivors[0].URL, alice.SID)
	ws.login(dom, alice)
	rdb := rig.leasesClient(t)
	defer rdb.Close()
	meta := sessionKeyBase(alice.SID) + ":m"
	// held counts the stanzas Redis keeps for browsers whose body starts
	// with prefix.
	held := func(prefix string) int {
		t.Helper()
		m, err := rdb.HGetAll(t.Context(), meta).Result()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for f, v := range m {
			if strings.HasPrefix(f, "k") && strings.Contains(v, "<body>"+prefix) {
				n++
			}
		}
		return n
	}
	waitHeld := func(prefix string, want int, when string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for held(prefix) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s Redis keeps %d %s messages for browsers, want %d", when, held(prefix), prefix, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	const m = 3
	// Answered: once the owner has written them (with their count, in
	// the script that writes its event log), Redis forgets them.
	for i := range m {
		say(fmt.Sprintf("visto-%d", i))
	}
	for i := range m {
		ws.waitFor("visto", contains(fmt.Sprintf(">visto-%d<", i)))
	}
	waitOwnerLog(t, owner, "visto-", m)
	waitHeld("visto-", 0, "after the pong")
	for len(ws.pings) > 0 {
		<-ws.pings
	}

	// In flight: written, and the ping after them not answered.
	ws.mute.Store(true)
	for i := range m {
		say(fmt.Sprintf("vivo-%d", i))
	}
	for i := range m {
		ws.waitFor("vivo", contains(fmt.Sprintf(">vivo-%d<", i)))
	}
	var out string
	select {
	case out = <-ws.pings:
	case <-time.After(10 * time.Second):
		t.Fatal("no ping after the written messages")
	}
	// Hostile: pongs the daemon did not ask for, before the stream ends
	// for the unanswered ping (wsWriteTimeout).
	forged := []string{"", "x", "<iq/>", "-1", "0", "18446744073709551615", strings.Repeat("9", 125), out + "0", " " + out, out + " "}
	for i := 1; i <= 40; i++ {
		if p := strconv.Itoa(i); p != out {
			forged = append(forged, p) // the answered ping's among them
		}
	}
	for _, p := range forged {
		ws.forgePong(p)
	}
	// The reader handles frames in order: once the message after the
	// pongs reached the contact, the pongs were seen.
	ws.send(`<message xmlns="jabber:client" to="` + desk.Bare + `" type="chat"><body>depois</body></message>`)
	desk.waitFor(t, 15*time.Second, "the message after the forged pongs", func(ev xmppconn.Event) bool {
		msg, ok := ev.(*xmppconn.Message)
		return ok && msg.Body == "depois"
	})
	waitOwnerLog(t, owner, "vivo-", m)
	waitHeld("vivo-", m, "with the pong withheld and forged ones sent")
	drainDesktop(desk)
	victim.Signal(t, syscall.SIGKILL, 5*time.Second)
	killed := time.Now()
	const n = 5
	for i := range n {
		say(fmt.Sprintf("durante-%d", i))
	}

	// The page's next WebSocket, through another node.
	next := survivors[1]
	ws2 := dialClusterWS(t, next.URL, next.URL, alice.SID)
	ws2.login(dom, alice)
	served := time.Since(killed)
	var got []string
	want := map[string]bool{}
	for i := range m {
		want[fmt.Sprintf(">vivo-%d<", i)] = true
	}
	for i := range n {
		want[fmt.Sprintf(">durante-%d<", i)] = true
	}
	for deadline, left := time.After(20*time.Second), len(want); left > 0; {
		select {
		case f, ok := <-ws2.in:
			if !ok {
				t.Fatalf("the new WebSocket closed with %d messages missing", left)
			}
			got = append(got, f)
			for w := range want {
				if strings.Contains(f, w) {
					delete(want, w)
					left--
				}
			}
		case <-deadline:
			t.Fatalf("the new WebSocket is missing %v", slices.Collect(maps.Keys(want)))
		}
	}
	// What else comes within a second: a repeat would.
	for settle := time.After(time.Second); ; {
		select {
		case f, ok := <-ws2.in:
			if ok {
				got = append(got, f)
				continue
			}
		case <-settle:
		}
		break
	}
	count := func(body string) int {
		c := 0
		for _, f := range got {
			c += strings.Count(f, ">"+body+"<")
		}
		return c
	}
	dup := 0
	for i := range m {
		if c := count(fmt.Sprintf("vivo-%d", i)); c != 1 {
			t.Errorf("the new WebSocket got vivo-%d, written but not ponged, %d times, want once", i, c)
		}
		if c := count(fmt.Sprintf("visto-%d", i)); c != 0 {
			t.Errorf("the new WebSocket got visto-%d, which a pong acknowledged, %d times", i, c)
			dup += c
		}
	}
	for i := range n {
		if c := count(fmt.Sprintf("durante-%d", i)); c != 1 {
			t.Errorf("the new WebSocket got durante-%d %d times, want once", i, c)
			dup += max(c-1, 0)
		}
	}
	if again := count("antes"); again != 0 {
		t.Errorf("the message the BOSH page acknowledged came again %d times", again)
	}
	t.Logf("kill -9 of the owner of a WebSocket: %d messages written but not ponged and %d sent meanwhile reached the next WebSocket, 0 lost, %d duplicated; %d forged pongs acknowledged nothing; served again %v after the kill",
		m, n, dup, len(forged), served.Round(10*time.Millisecond))
}

// waitOwnerLog waits until the owner's event log, read through api, has n
// messages whose body starts with prefix: they are in Redis with their
// count.
func waitOwnerLog(t *testing.T, api *apiClient, prefix string, n int) {
	t.Helper()
	seen, cursor := 0, ""
	for deadline := time.Now().Add(15 * time.Second); seen < n; {
		if time.Now().After(deadline) {
			t.Fatalf("the owner's event log has %d of the %d messages", seen, n)
		}
		p, err := api.events(t.Context(), cursor, time.Second, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range p.Events {
			if ev.Event == "message" && strings.HasPrefix(ev.Body, prefix) {
				seen++
			}
		}
		cursor = p.Cursor
	}
}

// TestClusterBrowserLeaseLapse: the owner's lease on a BOSH page's session
// lapses for a moment (its renewal late: a loaded node, Redis slow) while
// the page's next requests reach the other nodes. They ask the last owner
// the session's meta hash names, which still serves the page: its BOSH
// session goes on. Before, they took the missing lease for a gone owner
// and answered item-not-found, which ends the page's BOSH session
// (TestClusterBrowserHeldKillOwner failed so once, in a loaded CI run).
// A last owner frozen past its lease does not hold the request: the
// forward's watch of the lease ends it, and it is answered item-not-found
// where it landed. With no
// lease and no last owner (the owner gave the session back, or a forged
// sid), the request is answered item-not-found where it landed, forwarded
// nowhere.
func TestClusterBrowserLeaseLapse(t *testing.T) {
	rig := startClusterRig(t, 3, 3*time.Second)
	rig.e.register(t, "cblapse")
	alice := rig.e.login(t, "cblapse")
	page := rig.clusterPage(t, rig.browserBalancer(), alice)
	owner := rig.owner(t)
	others := newBalancer([]string{rig.api[(owner+1)%3], rig.api[(owner+2)%3]})
	others.base = &http.Transport{MaxIdleConnsPerHost: 8}
	page.Via(others)
	rdb := rig.leasesClient(t)
	defer rdb.Close()
	base := sessionKeyBase(alice.SID)
	ctx := t.Context()
	for range 3 {
		if err := rdb.Del(ctx, base+":lease").Err(); err != nil {
			t.Fatal(err)
		}
		page.Send("", "") // a 404 item-not-found fails here
	}
	if got := rig.owner(t); got != owner {
		t.Errorf("the session moved from node %d to node %d", owner, got)
	}

	// The last owner frozen (SIGSTOP) past its lease: the request is
	// answered where it landed once the forward's watch finds no lease
	// (half a TTL), not held at a node that does not answer.
	frozen := rig.Nodes[owner]
	if err := frozen.cmdSignal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			frozen.cmdSignal(syscall.SIGCONT)
		}
	}
	defer thaw()
	time.Sleep(3500 * time.Millisecond) // the lease TTL, and a renewal's margin
	page.RID++
	start := time.Now()
	st, _ := page.Post(ctx, `<body xmlns="http://jabber.org/protocol/httpbind" rid="`+strconv.FormatInt(page.RID, 10)+`" sid="`+page.SID+`"/>`)
	if took := time.Since(start); st != http.StatusNotFound || took > 3*time.Second {
		t.Errorf("a request whose last owner is frozen: %d %s after %v, want 404 item-not-found within the lease TTL", st, page.Last, took)
	}

	// Nobody named (the owner still frozen, so that no renewal sets the
	// lease again): answered where it landed.
	if err := rdb.Del(ctx, base+":lease").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HDel(ctx, base+":m", "owner").Err(); err != nil {
		t.Fatal(err)
	}
	page.RID++
	st, _ = page.Post(ctx, `<body xmlns="http://jabber.org/protocol/httpbind" rid="`+strconv.FormatInt(page.RID, 10)+`" sid="`+page.SID+`"/>`)
	if st != http.StatusNotFound || !strings.Contains(page.Last, "item-not-found") {
		t.Errorf("a request whose session nobody holds or held: %d %s, want 404 item-not-found", st, page.Last)
	}
	thaw()
}

// TestClusterBrowserCreateLosesLease: a stream's opening (a BOSH session
// creation, a server-side POST /v1/connect) whose node claimed the session
// and then lost it to another node during the login is served by the new
// owner, not answered 409 not_owner, on which a page's BOSH client gives
// up and PHP can do nothing (kill -9 at 2,000 users: a loaded node's
// renewals were late, another node took its sessions over, and a tab's
// creation got 409). Here the first node's login waits on a frozen
// Prosody while the test hands the lease to the other node, as that
// node's takeover would; the request is routed again, once, and the user
// chats through the node the request reached. The hostile case: a
// creation for a PHP session that is not logged in is refused as before,
// and not routed again.
func TestClusterBrowserCreateLosesLease(t *testing.T) {
	rig := startClusterRig(t, 2, 3*time.Second)
	rig.e.register(t, "cbsteal", "cbstealapi", "cbstealown", "cbmark")
	mark := rig.e.login(t, "cbmark")
	only := func(i int) *balancer {
		lb := newBalancer([]string{rig.api[i]})
		lb.base = &http.Transport{MaxIdleConnsPerHost: 8}
		return lb
	}
	rig.clusterPage(t, only(1), mark) // node1 owns mark's session: its lease names node1
	rdb := rig.leasesClient(t)
	defer rdb.Close()
	ctx := t.Context()
	ml, err := rdb.Get(ctx, sessionKeyBase(mark.SID)+":lease").Result()
	node1 := strings.SplitN(ml, "|", 2)
	if err != nil || len(node1) != 2 || !strings.HasPrefix(node1[1], "node1|") {
		t.Fatalf("mark's lease %q: %v", ml, err)
	}
	create := `<body xmlns="http://jabber.org/protocol/httpbind" xmlns:xmpp="urn:xmpp:xbosh" content="text/xml; charset=utf-8" hold="1" rid="1000" to="` +
		rig.e.XMPP.Domain + `" ver="1.6" wait="3" xmpp:version="1.0"/>`
	page := func(u *user) *sidecar.BOSHClient {
		return sidecar.NewBOSHClient(t, "http://balancer/http-bind", "Cookie", "sessionid="+u.SID,
			"Origin", "https://intranet.example", "X-Forwarded-Host", "intranet.example").Via(only(0))
	}
	pid := prosodyPID(t, rig.e.XMPP)
	rerouted := 0.0
	for _, tc := range []struct {
		name string
		user string
		open func(u *user) (status int, check func(t *testing.T))
	}{
		{"bosh", "cbsteal", func(u *user) (int, func(*testing.T)) {
			p := page(u)
			st, _ := p.Post(ctx, create)
			return st, func(t *testing.T) {
				_, sid, _ := strings.Cut(p.Last, ` sid="`)
				sid, _, _ = strings.Cut(sid, `"`)
				if sid == "" {
					t.Fatalf("no sid in %s", p.Last)
				}
				p.SID, p.RID = sid, 1000
				if jid := p.Login(u.Name, "placeholder"); !strings.HasPrefix(jid, u.Bare+"/") {
					t.Fatalf("bound %q", jid)
				}
			}
		}},
		{"connect", "cbstealapi", func(u *user) (int, func(*testing.T)) {
			var r connectResp
			st, err := rig.Nodes[0].client(u.SID).call(ctx, "POST", "/v1/connect", nil, &r)
			return st, func(t *testing.T) {
				if err != nil || r.State != "online" || !strings.HasPrefix(r.JID, u.Bare+"/") {
					t.Fatalf("connect answered %+v %v", r, err)
				}
			}
		}},
		{"connect-owner", "cbstealown", func(u *user) (int, func(*testing.T)) {
			// node0 holds the lease already (claimed by a call that
			// does not log in), so the connect is served on the owner
			// path, where its handler reads the body.
			var r connectResp
			in := map[string]string{"show": "away", "status": "moved while opening"}
			st, err := rig.Nodes[0].client(u.SID).call(ctx, "POST", "/v1/connect", in, &r)
			return st, func(t *testing.T) {
				if err != nil || r.State != "online" || !strings.HasPrefix(r.JID, u.Bare+"/") {
					t.Fatalf("connect answered %+v %v", r, err)
				}
				// The body went to the new owner too: the user's own
				// initial presence comes back with it.
				p := &poller{c: rig.Nodes[0].client(u.SID), cursor: r.Cursor}
				p.waitFor(t, 15*time.Second, "the user's own presence as the connect set it", func(e event) bool {
					return e.Event == "presence" && e.From == r.JID && e.Show == "away" && e.Status == "moved while opening"
				})
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := rig.e.login(t, tc.user)
			if tc.name == "connect-owner" {
				var me meResp
				rig.Nodes[0].client(u.SID).mustCall(t, "GET", "/v1/me", nil, &me, http.StatusOK)
			}
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			thawed := false
			thaw := func() {
				if !thawed {
					thawed = true
					syscall.Kill(pid, syscall.SIGCONT)
				}
			}
			defer thaw()
			type answer struct {
				status int
				check  func(*testing.T)
			}
			answered := make(chan answer, 1)
			go func() {
				st, check := tc.open(u)
				answered <- answer{st, check}
			}()
			// node0 claims the session and dials the frozen server; the
			// lease then goes to node1, with a higher token.
			base := sessionKeyBase(u.SID)
			var l0 string
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if l0, _ = rdb.Get(ctx, base+":lease").Result(); strings.Contains(l0, "|node0|") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("node0 did not claim the session: lease %q", l0)
				}
			}
			time.Sleep(300 * time.Millisecond) // the request is past its routing, in its login
			tok, _ := strconv.ParseUint(strings.SplitN(l0, "|", 2)[0], 10, 64)
			stolen := strconv.FormatUint(tok+1, 10) + "|" + node1[1]
			if err := rdb.Set(ctx, base+":lease", stolen, 20*time.Second).Err(); err != nil {
				t.Fatal(err)
			}
			if err := rdb.HSet(ctx, base+":m", "owner", stolen).Err(); err != nil {
				t.Fatal(err)
			}
			thaw()
			var a answer
			select {
			case a = <-answered:
			case <-time.After(60 * time.Second):
				t.Fatal("no answer")
			}
			if a.status != http.StatusOK {
				t.Fatalf("an opening whose session moved during its login: HTTP %d, want 200 from the new owner", a.status)
			}
			a.check(t)
			if l, err := rdb.Get(ctx, base+":lease").Result(); err != nil || !strings.Contains(l, "|node1|") {
				t.Errorf("the session's lease after the opening: %q %v, want node1's", l, err)
			}
			rerouted++
			if n := rig.clusterMetric(t, `imsidecar_cluster_forwards_total{result="rerouted"}`, rig.Nodes[0]); n != rerouted {
				t.Errorf("node0 routed %v requests again, want %v", n, rerouted)
			}
			// node0's login may have bound before its first state write
			// found the lease node1's (it then closed that stream);
			// node1's is the one.
			if n := rig.e.XMPP.Binds(u.Name); n > 2 {
				t.Errorf("Prosody bound %d resources for the PHP session, want node0's and node1's at most", n)
			}
		})
	}

	// Hostile: no PHP session behind the cookie; refused where it
	// landed, and not routed again.
	stranger := page(&user{SID: "nosuchsession0123456789abcdef"})
	if st, _ := stranger.Post(ctx, create); st == http.StatusOK {
		t.Errorf("a creation without a PHP session was answered %d %s", st, stranger.Last)
	}
	if n := rig.clusterMetric(t, `imsidecar_cluster_forwards_total{result="rerouted"}`, rig.Nodes[0]); n != rerouted {
		t.Errorf("node0 routed %v requests again after the stranger's, want %v", n, rerouted)
	}
}
