package phpsession

import (
	"fmt"
	"net/url"
	"strings"
)

// MaxIDLength bounds a session id. PHP's session.sid_length allows 22..256.
const MaxIDLength = 256

// DefaultMinIDLength is the shortest id accepted by default: PHP's own
// minimum for session.sid_length.
const DefaultMinIDLength = 22

// ValidateID checks id against PHP's session id alphabet [A-Za-z0-9,-] and
// the length bounds. It runs before any file path or Redis key is built, so
// no separator, dot, NUL or percent sign can reach the store.
func ValidateID(id string, minLen int) error {
	if minLen <= 0 {
		minLen = DefaultMinIDLength
	}
	if len(id) < minLen || len(id) > MaxIDLength {
		return fmt.Errorf("%w: length %d outside %d..%d", ErrInvalidID, len(id), minLen, MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == ',' || c == '-') {
			return fmt.Errorf("%w: byte %d is not in [A-Za-z0-9,-]", ErrInvalidID, i)
		}
	}
	return nil
}

// IDFromCookie returns the value of the first cookie called name in a Cookie
// header, percent-decoded as PHP decodes it. The caller still validates it.
func IDFromCookie(header, name string) (string, bool) {
	for part := range strings.SplitSeq(header, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k != name {
			continue
		}
		v = strings.Trim(v, `"`)
		dec, err := url.QueryUnescape(v)
		if err != nil {
			return "", false
		}
		return dec, true
	}
	return "", false
}
