package sidecar

import (
	"crypto/sha1"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The optional parts of XEP-0124 a BOSH session may use: a session pause
// (§12: a page about to be replaced asks to be waited for longer than the
// inactivity period, up to maxpause) and key sequencing (§15: each request
// proves it comes from whoever made the previous one, by a key whose SHA-1
// is the previous request's).

// boshMaxPause caps the pause a client may ask for, announced as maxpause.
const boshMaxPause = 120 * time.Second

// maxPause is what this daemon announces: boshMaxPause, or less when
// --inactivity is shorter, so a paused page cannot outlive the user's
// stream by staying silent.
func (h *boshServer) maxPause() time.Duration {
	return min(boshMaxPause, h.a.cfg.Inactivity)
}

// pauseOf reads a request's pause attribute: ok false without one; an
// error for a value that is not a number of seconds within maxpause.
func (h *boshServer) pauseOf(body *boshBody) (time.Duration, bool, error) {
	v, present := body.attrs["pause"]
	if !present {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, true, fmt.Errorf("pause %q is not a number of seconds", v)
	}
	if max := h.maxPause(); time.Duration(n) > max/time.Second {
		return 0, true, fmt.Errorf("pause %d s is over maxpause %d s", n, int64(max/time.Second))
	}
	return time.Duration(n) * time.Second, true, nil
}

// inactivity is how long the session may go without a request now: the
// pause asked for until the next request, else boshInactivity. bs.mu is
// held.
func (bs *boshSession) inactivityLocked() time.Duration {
	if bs.paused > 0 {
		return bs.paused
	}
	return boshInactivity
}

// pause answers every held request now (the page is going) and lets the
// session be silent for d.
func (bs *boshSession) pause(d time.Duration) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	bs.paused = d
	for _, w := range bs.held {
		bs.release(w)
	}
}

// validKey reports whether k looks like a key: a SHA-1 in hex.
func validKey(k string) bool {
	if len(k) != 2*sha1.Size {
		return false
	}
	_, err := hex.DecodeString(k)
	return err == nil
}

// checkKeyLocked verifies the key of the next request in rid order and
// moves the sequence on (§15.3): once a request set newkey, every request
// must carry a key whose SHA-1 is the previous one's newkey (or key); a
// request may start a new sequence with newkey. Before any newkey there is
// nothing to check. bs.mu is held.
func (bs *boshSession) checkKeyLocked(rid int64, body *boshBody) bool {
	key, newkey := strings.ToLower(body.attrs["key"]), strings.ToLower(body.attrs["newkey"])
	if newkey != "" && !validKey(newkey) {
		return false
	}
	if bs.key != "" {
		sum := sha1.Sum([]byte(key))
		if key == "" || subtle.ConstantTimeCompare([]byte(hex.EncodeToString(sum[:])), []byte(bs.key)) != 1 {
			return false
		}
		bs.key = key
	}
	if newkey != "" {
		bs.key = newkey
	}
	if key != "" || bs.key != "" {
		bs.keys[rid] = key
	}
	return true
}

// retransmitKeyOK reports whether a repeated request carries the key its
// first copy did (a replay with a made-up key is not a retransmission).
// bs.mu is held.
func (bs *boshSession) retransmitKeyOK(rid int64, body *boshBody) bool {
	want, ok := bs.keys[rid]
	if !ok {
		return true // before any key, or kept no longer
	}
	return subtle.ConstantTimeCompare([]byte(strings.ToLower(body.attrs["key"])), []byte(want)) == 1
}
