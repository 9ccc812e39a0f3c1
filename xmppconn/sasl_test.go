package xmppconn

import (
	"errors"
	"testing"
	"time"

	msasl "mellium.im/sasl"
)

func scramClient() *msasl.Negotiator {
	n := msasl.NewClient(msasl.ScramSha256, msasl.Credentials(func() ([]byte, []byte, []byte) {
		return []byte("alice"), []byte("secret"), nil
	}))
	return n
}

func TestCheckServerFirst(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"r=abc,s=c2FsdA==,i=4096", true},
		{"r=abc,s=c2FsdA==,i=4096,x", false}, // would loop forever in mellium.im/sasl v0.3.2
		{"r=abc,,i=1", false},
		{"r=abc,s=c2FsdA==,i=0", false},
		{"r=abc,s=c2FsdA==,i=99999999", false},
		{"r=abc,s=c2FsdA==,i=-1", false},
		{"", false},
	}
	for _, tt := range tests {
		err := checkServerFirst([]byte(tt.in))
		if (err == nil) != tt.ok {
			t.Errorf("checkServerFirst(%q) = %v, want ok=%v", tt.in, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrProtocol) {
			t.Errorf("checkServerFirst(%q) = %v, not ErrProtocol", tt.in, err)
		}
	}
}

// FuzzSCRAMChallenge: whatever a server sends as its first SCRAM message,
// the client step returns promptly without panicking.
func FuzzSCRAMChallenge(f *testing.F) {
	for _, s := range []string{"r=abc,s=c2FsdA==,i=4096", "m=x,r=a", "r=,s=,i=", "i=1,i=2", "r=abc,s=!!!,i=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ch string) {
		n := scramClient()
		if _, _, err := safeStep(n, nil); err != nil {
			t.Fatal(err)
		}
		if checkServerFirst([]byte(ch)) != nil {
			return
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			safeStep(n, []byte(ch))
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("SCRAM step on %q did not return", ch)
		}
	})
}

func TestAuthErrorIsErrAuth(t *testing.T) {
	var err error = &authError{mech: "PLAIN", cond: "not-authorized"}
	if !errors.Is(err, ErrAuth) {
		t.Fatal("authError does not match ErrAuth")
	}
	if got := err.Error(); got != "xmppconn: authentication failed: PLAIN not-authorized" {
		t.Fatalf("Error() = %q", got)
	}
}
