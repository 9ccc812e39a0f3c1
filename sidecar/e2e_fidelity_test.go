package sidecar_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
	"expressolivre.org/imsidecar/sidecar"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// TestE2EExpressoFidelity is issue 16's done-when: for every session store,
// real PHP writes sessions with Expresso's .htaccess settings (ISO-8859-1,
// gc_maxlifetime 14400, serialize_handler php) through that store's save
// handler, and the daemon reads exactly what Expresso would: accented
// names and passwords, a uid containing "@", and an mcrypt-encrypted
// app-session password refused without a word to the Jabber server.
func TestE2EExpressoFidelity(t *testing.T) {
	if testing.Short() {
		t.Skip("integration: Prosody, PHP, redis-server, memcached")
	}
	srv := xmppconntest.StartProsody(t, xmppconntest.Options{})
	const password = "sênha|;\"}ção"
	srv.Register(t, "ana", password)
	for _, name := range phpsession.StoreNames() {
		t.Run(name, func(t *testing.T) {
			c := phpsessiontest.Cases[name](t)
			var extra []string
			if c.Config.KeyPrefix != "" {
				extra = append(extra, "--session-key-prefix="+c.Config.KeyPrefix)
			}
			d := startDaemon(t, daemonOptions{Store: phpStore{Kind: name, SavePath: c.Config.SavePath}, XMPP: srv, Extra: extra})

			ana := phpsessiontest.NewID(t)
			phpsessiontest.WriteExpressoSession(t, c.PHP, ana, phpsessiontest.ExpressoUser{User: "ana", Password: password,
				FullName: "Ana Conceição Araújo", Domain: srv.Domain, Pad: 30000})
			var cr connectResp
			d.client(ana).mustCall(t, "POST", "/v1/connect", nil, &cr, http.StatusOK)
			var me meResp
			d.client(ana).mustCall(t, "GET", "/v1/me", nil, &me, http.StatusOK)
			if me.User != "ana" || me.FullName != "Ana Conceição Araújo" || me.Email != "ana@"+srv.Domain {
				t.Errorf("me = %+v", me)
			}

			at := phpsessiontest.NewID(t)
			phpsessiontest.WriteExpressoSession(t, c.PHP, at, phpsessiontest.ExpressoUser{User: "maria@setor", Password: "pw",
				Domain: srv.Domain, UserIn: "lid"})
			d.client(at).mustCall(t, "GET", "/v1/me", nil, &me, http.StatusOK)
			if me.User != "maria@setor" {
				t.Errorf("session_lid maria@setor@%s read as user %q", srv.Domain, me.User)
			}
			// session show opens the same store through the same factory.
			var out, errOut bytes.Buffer
			args := append([]string{"session", "show", "--session-store=" + name, "--session-save-path=" + c.Config.SavePath}, extra...)
			if err := sidecar.Run(t.Context(), append(args, ana), func(string) string { return "" }, &out, &errOut); err != nil {
				t.Fatalf("session show: %v %s", err, errOut.String())
			}
			var shown struct{ Identity map[string]any }
			if err := json.Unmarshal(out.Bytes(), &shown); err != nil || shown.Identity["user"] != "ana" ||
				shown.Identity["fullname"] != "Ana Conceição Araújo" || strings.Contains(out.String(), password) {
				t.Errorf("session show: %v\n%s", err, out.String())
			}

			enc := phpsessiontest.NewID(t)
			phpsessiontest.WriteExpressoSession(t, c.PHP, enc, phpsessiontest.ExpressoUser{User: "ana", Password: password,
				Domain: srv.Domain, Mcrypt: true})
			for range 3 {
				_, err := d.client(enc).call(t.Context(), "POST", "/v1/connect", nil, nil)
				var ae *apiError
				if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || ae.Code != "password_unavailable" {
					t.Fatalf("connect with an mcrypt password: %v", err)
				}
			}
			resp, err := http.Get(d.OpsURL + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			metrics, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(metrics), "imsidecar_auth_failures_total 0") {
				t.Errorf("an authentication failure was counted")
			}
			if n := strings.Count(d.Log(), "password unavailable"); n != 1 {
				t.Errorf("%d password unavailable log lines, want 1", n)
			}
			if log := d.Log(); strings.Contains(log, password) || strings.Contains(log, ana) || strings.Contains(log, enc) {
				t.Errorf("the log carries a password or a session id")
			}

			phpsessiontest.DestroySession(t, c.PHP, ana)
			_, err = d.client(ana).call(t.Context(), "GET", "/v1/me", nil, nil)
			var ae *apiError
			if !errors.As(err, &ae) || ae.Code != "session_not_found" {
				t.Fatalf("after logout: %v", err)
			}
		})
	}
}
