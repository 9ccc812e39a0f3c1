package xmppconn

import (
	"fmt"
	"net"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/secure/precis"
	"golang.org/x/text/unicode/norm"
)

// maxPart is the RFC 7622 limit for each of the three parts, in bytes.
const maxPart = 1023

// JID is an XMPP address (RFC 7622), each part already normalized.
type JID struct{ Local, Domain, Resource string }

// String returns the JID as local@domain/resource, omitting empty parts.
func (j JID) String() string {
	var b strings.Builder
	if j.Local != "" {
		b.WriteString(j.Local)
		b.WriteByte('@')
	}
	b.WriteString(j.Domain)
	if j.Resource != "" {
		b.WriteByte('/')
		b.WriteString(j.Resource)
	}
	return b.String()
}

// Bare returns the JID without its resource.
func (j JID) Bare() JID { return JID{Local: j.Local, Domain: j.Domain} }

// ParseJID parses and normalizes s per RFC 7622: the localpart with the
// PRECIS UsernameCaseMapped profile, the resourcepart with OpaqueString, the
// domain lowercased and NFC-normalized. Failures wrap ErrInvalidJID.
func ParseJID(s string) (JID, error) {
	bad := func(why string) (JID, error) {
		return JID{}, fmt.Errorf("%w: %s", ErrInvalidJID, why)
	}
	if !utf8.ValidString(s) {
		return bad("not UTF-8")
	}
	var j JID
	rest := s
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		j.Resource = rest[i+1:]
		rest = rest[:i]
		if j.Resource == "" {
			return bad("empty resourcepart")
		}
	}
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		j.Local = rest[:i]
		rest = rest[i+1:]
		if j.Local == "" {
			return bad("empty localpart")
		}
	}
	j.Domain = rest
	var err error
	if j.Domain, err = normDomain(j.Domain); err != nil {
		return bad(err.Error())
	}
	if j.Local != "" {
		if len(j.Local) > 4*maxPart {
			return bad("localpart too long")
		}
		if j.Local, err = precis.UsernameCaseMapped.String(j.Local); err != nil {
			return bad("localpart: " + err.Error())
		}
		if j.Local == "" || len(j.Local) > maxPart {
			return bad("localpart length")
		}
		if strings.ContainsAny(j.Local, "\"&'/:<>@") {
			return bad("localpart contains a forbidden character")
		}
	}
	if j.Resource != "" {
		if len(j.Resource) > 4*maxPart {
			return bad("resourcepart too long")
		}
		if j.Resource, err = precis.OpaqueString.String(j.Resource); err != nil {
			return bad("resourcepart: " + err.Error())
		}
		if j.Resource == "" || len(j.Resource) > maxPart {
			return bad("resourcepart length")
		}
	}
	return j, nil
}

// normDomain validates and normalizes a domainpart: an IP literal or a
// sequence of labels of letters, digits, marks, '-' and '_'.
func normDomain(d string) (string, error) {
	d = strings.TrimSuffix(d, ".")
	if d == "" {
		return "", fmt.Errorf("empty domainpart")
	}
	if len(d) > 4*maxPart {
		return "", fmt.Errorf("domainpart too long")
	}
	if d[0] == '[' {
		if d[len(d)-1] != ']' {
			return "", fmt.Errorf("bad IPv6 literal")
		}
		ip := net.ParseIP(d[1 : len(d)-1])
		if ip == nil || ip.To4() != nil {
			return "", fmt.Errorf("bad IPv6 literal")
		}
		return "[" + ip.String() + "]", nil
	}
	d = strings.ToLower(norm.NFC.String(d))
	if len(d) > maxPart {
		return "", fmt.Errorf("domainpart too long")
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("bad domain label length")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("domain label starts or ends with '-'")
		}
		for _, r := range label {
			switch {
			case r == '-' || r == '_':
			case r < utf8.RuneSelf && (r >= 'a' && r <= 'z' || r >= '0' && r <= '9'):
			case r >= utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r) || unicode.Is(unicode.Mc, r)):
			default:
				return "", fmt.Errorf("domain contains %q", r)
			}
		}
	}
	return d, nil
}
