package expresso_test

import (
	"testing"

	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// TestStandinEjabberdBOSH runs the stand-in's scenario against ejabberd's
// own mod_bosh (Debian's 23.01), the other server Expresso 2.5 sites ran:
// a second, independent server accepting what the stand-in does (login
// with the blob 2.5 hands out, over-padded ones too, presence, chat and
// chat states both ways, the reload, the menu's "offline") shows its
// quirks are the 2.5 client's, not artefacts of Prosody's BOSH. ejabberd
// differs in one thing: it refuses <show>null</show>. The unload phases
// run on Prosody and imsidecar only (expect.reloadOnly says why), and the
// page's requests reach ejabberd in rid order (site.proxyInOrder says why).
func TestStandinEjabberdBOSH(t *testing.T) {
	d := startDriver(t)
	srv := xmppconntest.StartEjabberd(t, xmppconntest.EjabberdOptions{HTTP: true})
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(srv.LogTail(80))
		}
	})
	standinOnServer(t, d, server{Addr: srv.Addr, Domain: srv.Domain, BOSHURL: srv.BOSHURL, TLS: srv.TLSConfig(),
		Register: srv.Register, Befriend: srv.Befriend, JID: srv.JID, InOrder: true},
		expect{roster: false, flap: true, unloadFlap: true, menuOffline: true, showNullRefused: true, reloadOnly: true})
}
