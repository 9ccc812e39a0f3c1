package phpsession_test

import (
	"testing"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
)

// TestLookupIdentityOnly: with IdentityOnly a Reader names the same user
// from a session PHP wrote, cached or not, and keeps no session variables.
func TestLookupIdentityOnly(t *testing.T) {
	dir := t.TempDir()
	id := phpsessiontest.NewID(t)
	phpsessiontest.WriteExpressoSession(t, phpsessiontest.Store{Handler: "files", SavePath: dir}, id,
		phpsessiontest.ExpressoUser{User: "alice", Password: "pw-1", FullName: "Alice Araújo", Pad: 8 << 10})
	open := func(identityOnly bool) *phpsession.Reader {
		r, err := phpsession.Open(t.Context(), phpsession.Config{Store: "files", SavePath: dir, Serializer: phpsession.SerializerPHP,
			Charset: "ISO-8859-1", Profile: phpsession.ExpressoProfile(0), Owner: -1, IdentityOnly: identityOnly})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	full, err := open(false).Lookup(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if full.Vars == nil || full.Vars.Len() == 0 {
		t.Fatal("a Reader without IdentityOnly returned no variables")
	}
	r := open(true)
	for _, pass := range []string{"cold", "cached"} {
		s, err := r.Lookup(t.Context(), id)
		if err != nil {
			t.Fatalf("%s: %v", pass, err)
		}
		if s.Vars != nil {
			t.Errorf("%s: IdentityOnly returned %d variables", pass, s.Vars.Len())
		}
		if s.Identity != full.Identity || s.Version != full.Version {
			t.Errorf("%s: identity %+v version %q, want %+v %q", pass, s.Identity, s.Version, full.Identity, full.Version)
		}
		if s.Identity.User != "alice" || s.Identity.Password != "pw-1" || s.Identity.FullName != "Alice Araújo" {
			t.Errorf("%s: identity %+v", pass, s.Identity)
		}
	}
}
