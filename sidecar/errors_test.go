package sidecar

import (
	"fmt"
	"net/http"
	"testing"

	"expressolivre.org/imsidecar/xmppconn"
)

// TestStatusForSizes: a message too large to send is the page's 413, told
// apart from a body too large; an oversized reply from the server is not.
func TestStatusForSizes(t *testing.T) {
	for _, tt := range []struct {
		err    error
		status int
		code   string
	}{
		{xmppconn.ErrSendTooLarge, http.StatusRequestEntityTooLarge, "message_too_large"},
		{ErrTooLarge, http.StatusRequestEntityTooLarge, "too_large"},
		{xmppconn.ErrStanzaTooLarge, http.StatusBadGateway, "xmpp_unavailable"},
	} {
		st, code := statusFor(fmt.Errorf("wrapped: %w", tt.err))
		if st != tt.status || code != tt.code {
			t.Errorf("%v: %d %s, want %d %s", tt.err, st, code, tt.status, tt.code)
		}
	}
}
