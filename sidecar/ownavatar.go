package sidecar

import (
	"bytes"
	"context"
	"sync"
)

// nsVCardConversion is the account feature of a server that keeps vCards
// and avatars in PEP and puts the avatar's hash into every available
// presence of its users itself (XEP-0398; Prosody's mod_vcard_legacy).
const nsVCardConversion = "urn:xmpp:pep-vcard-conversion:0"

// serverAvatars learns, once per daemon, whether the Jabber server
// advertises the user's avatar in presence itself. If it does, a fresh
// stream need not read the user's own vCard at login to put the photo's
// hash into its presence (registry.advertiseAvatar): one IQ less per login
// for the server, and no vCard photo, often larger than a TLS record,
// read into a connection that keeps its largest record buffer for life
// (crypto/tls, golang/go#43563). The first stream asks (disco#info of its
// own account); streams that log in meanwhile wait for its answer. A
// failed question is asked again by the next stream. The zero value is
// ready.
type serverAvatars struct {
	mu      sync.Mutex
	known   bool
	injects bool
	asking  chan struct{} // closed when the stream asking has its answer
}

// serverInjects reports whether the server advertises avatars itself,
// asking through conn if nobody knows yet. Unknown (an error, a stream
// that cannot ask, ctx done) is false: the caller reads the vCard.
func (a *serverAvatars) serverInjects(ctx context.Context, conn any) bool {
	for {
		a.mu.Lock()
		if a.known {
			a.mu.Unlock()
			return a.injects
		}
		if ch := a.asking; ch != nil {
			a.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return false
			}
		}
		q, ok := conn.(iqSender)
		if !ok {
			a.mu.Unlock()
			return false
		}
		ch := make(chan struct{})
		a.asking = ch
		a.mu.Unlock()

		info, err := q.SendIQ(ctx, "get", "", []byte(`<query xmlns="http://jabber.org/protocol/disco#info"/>`))
		a.mu.Lock()
		a.asking = nil
		if err == nil {
			a.known = true
			a.injects = bytes.Contains(info, []byte(`var="`+nsVCardConversion+`"`)) ||
				bytes.Contains(info, []byte(`var='`+nsVCardConversion+`'`))
		}
		injects := a.injects
		a.mu.Unlock()
		close(ch)
		return err == nil && injects
	}
}
