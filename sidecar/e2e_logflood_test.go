package sidecar_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// TestAbuseForgedCarbonFlood: a contact sends 2,000 forged carbons in a
// burst (a scripted server delivers them on the user's stream). Each is
// dropped, the user keeps receiving, and the daemon's log gets a handful
// of warnings and then one line with the count, written at the latest on
// shutdown — not 2,000 lines.
func TestAbuseForgedCarbonFlood(t *testing.T) {
	requireBinary(t, "php", "php-cli")
	fake := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{Users: map[string]string{"alice": "alice-pw"}})
	dir := filepath.Join(t.TempDir(), "sessions")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	srv := &xmppconntest.Server{Addr: fake.Addr, Domain: fake.Domain, CAFile: fake.Certs.CAFile}
	e := &e2e{XMPP: srv, Store: phpStore{Kind: "files", SavePath: dir}}
	e.D = startDaemon(t, daemonOptions{Store: e.Store, XMPP: srv})
	t.Cleanup(func() { e.checkLogs(t) })
	alice := e.login(t, "alice")
	pa := alice.connect(t)
	var fc *xmppconntest.FakeConn
	select {
	case fc = <-fake.Conns():
	case <-time.After(15 * time.Second):
		t.Fatal("no connection from alice")
	}
	const flood = 2000
	var b strings.Builder
	for i := range flood {
		fmt.Fprintf(&b, "<message from='mallory%d@%s/x' to='%s'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"+
			"<message xmlns='jabber:client' from='bob@%s/y' to='%s' type='chat' id='forged%d'><body>forged</body></message></forwarded></received></message>",
			i%7, fake.Domain, fc.JID, fake.Domain, fc.JID, i)
	}
	b.WriteString("<message from='gina@" + fake.Domain + "/x' to='" + fc.JID + "' type='chat' id='real'><body>genuine</body></message>")
	start := time.Now()
	if err := fc.Write(b.String()); err != nil {
		t.Fatal(err)
	}
	pa.waitFor(t, 20*time.Second, "the genuine message after the flood", func(ev event) bool { return ev.Event == "message" && ev.ID == "real" })
	t.Logf("2,000 forged carbons and a message delivered in %v", time.Since(start).Round(time.Millisecond))
	for _, ev := range pa.seen {
		if ev.Event == "message" && ev.Body == "forged" {
			t.Fatalf("a forged carbon reached the page: %+v", ev)
		}
	}
	const warn = "dropping carbon not from own account"
	if n := strings.Count(e.D.Log(), warn); n > 5 {
		t.Fatalf("%d warning lines for %d forged carbons, want at most 5", n, flood)
	}
	if code, _ := e.D.Signal(t, syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	log := e.D.Log()
	var counted []string
	for line := range strings.Lines(log) {
		if strings.Contains(line, warn) && strings.Contains(line, "suppressed=") {
			counted = append(counted, line)
		}
	}
	if len(counted) != 1 || !strings.Contains(counted[0], fmt.Sprintf("suppressed=%d", flood-strings.Count(log, warn)+1)) ||
		!strings.Contains(counted[0], "user=alice") {
		t.Fatalf("the count of suppressed warnings: %q\n%s", counted, e.D.LogTail(20))
	}
}
