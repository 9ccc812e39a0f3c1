package xmppconn

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strconv"

	esasl "github.com/emersion/go-sasl"
	"golang.org/x/text/secure/precis"
	msasl "mellium.im/sasl"
)

// Mechanisms we implement, strongest first.
var saslPreference = []string{"SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"}

// maxSCRAMIterations refuses servers that would make us burn CPU.
const maxSCRAMIterations = 1 << 20

// authenticate runs exactly one SASL exchange with the strongest offered
// mechanism. A rejection wraps ErrAuth, except temporary-auth-failure.
func (s *stream) authenticate(user, password string) error {
	mn := s.features.child(nsSASL, "mechanisms")
	if mn == nil {
		return fmt.Errorf("%w: server offers no SASL mechanisms", ErrProtocol)
	}
	offered := map[string]bool{}
	for _, k := range mn.kids {
		if k.name.Local == "mechanism" {
			offered[k.text] = true
		}
	}
	mech := ""
	for _, m := range saslPreference {
		if offered[m] {
			mech = m
			break
		}
	}
	if mech == "" {
		return fmt.Errorf("%w: no supported SASL mechanism offered", ErrProtocol)
	}
	if p, err := precis.OpaqueString.String(password); err == nil {
		password = p
	}
	var step func(challenge []byte) (resp []byte, err error)
	var scram *msasl.Negotiator
	var first []byte
	switch mech {
	case "PLAIN":
		_, ir, err := esasl.NewPlainClient("", user, password).Start()
		if err != nil {
			return fmt.Errorf("xmppconn: sasl: %w", err)
		}
		first = ir
		step = func([]byte) ([]byte, error) {
			return nil, fmt.Errorf("%w: unexpected SASL challenge for PLAIN", ErrProtocol)
		}
	default:
		m := msasl.ScramSha1
		if mech == "SCRAM-SHA-256" {
			m = msasl.ScramSha256
		}
		scram = msasl.NewClient(m, msasl.Credentials(func() ([]byte, []byte, []byte) {
			return []byte(user), []byte(password), nil
		}))
		var err error
		if _, first, err = safeStep(scram, nil); err != nil {
			return err
		}
		step = func(ch []byte) ([]byte, error) {
			if scram.State()&msasl.StepMask == msasl.AuthTextSent {
				if err := checkServerFirst(ch); err != nil {
					return nil, err
				}
			}
			_, resp, err := safeStep(scram, ch)
			return resp, err
		}
	}
	var b bytes.Buffer
	b.WriteString(`<auth xmlns="` + nsSASL + `" mechanism="` + mech + `">`)
	if len(first) == 0 {
		b.WriteByte('=')
	} else {
		b.WriteString(base64.StdEncoding.EncodeToString(first))
	}
	b.WriteString(`</auth>`)
	if err := s.write(b.Bytes()); err != nil {
		return err
	}
	for {
		n, err := s.read()
		if err != nil {
			return err
		}
		if n.name.Space != nsSASL {
			return fmt.Errorf("%w: unexpected %s during SASL", ErrProtocol, n.name.Local)
		}
		switch n.name.Local {
		case "challenge":
			ch, err := decode64(n.text)
			if err != nil {
				return err
			}
			resp, err := step(ch)
			if err != nil {
				s.write([]byte(`<abort xmlns="` + nsSASL + `"/>`))
				return err
			}
			b.Reset()
			b.WriteString(`<response xmlns="` + nsSASL + `">`)
			b.WriteString(base64.StdEncoding.EncodeToString(resp))
			b.WriteString(`</response>`)
			if err := s.write(b.Bytes()); err != nil {
				return err
			}
		case "success":
			if scram == nil {
				return nil
			}
			data, err := decode64(n.text)
			if err != nil {
				return err
			}
			if scram.State()&msasl.StepMask != msasl.ResponseSent || len(data) == 0 {
				return fmt.Errorf("%w: SCRAM success without server verification", ErrProtocol)
			}
			if _, err := step(data); err != nil {
				return fmt.Errorf("%w: SCRAM server signature mismatch", ErrProtocol)
			}
			return nil
		case "failure":
			cond, text := "not-authorized", ""
			for _, k := range n.kids {
				if k.name.Local == "text" {
					text = k.text
				} else {
					cond = k.name.Local
				}
			}
			if cond == "temporary-auth-failure" {
				return fmt.Errorf("xmppconn: sasl %s: temporary-auth-failure %s", mech, text)
			}
			return &authError{mech: mech, cond: cond, text: text}
		default:
			return fmt.Errorf("%w: unexpected SASL %s", ErrProtocol, n.name.Local)
		}
	}
}

// authError is a permanent SASL rejection; errors.Is(err, ErrAuth).
type authError struct{ mech, cond, text string }

func (e *authError) Error() string {
	s := "xmppconn: authentication failed: " + e.mech + " " + e.cond
	if e.text != "" {
		s += ": " + e.text
	}
	return s
}

func (e *authError) Unwrap() error { return ErrAuth }

// Condition returns the SASL failure condition, e.g. "not-authorized".
func (e *authError) Condition() string { return e.cond }

func decode64(s string) ([]byte, error) {
	s = string(bytes.TrimSpace([]byte(s)))
	if s == "=" || s == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: bad base64 in SASL: %v", ErrProtocol, err)
	}
	return b, nil
}

// safeStep calls Step, turning a panic or an error into ErrProtocol.
func safeStep(n *msasl.Negotiator, ch []byte) (more bool, resp []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: SASL step panicked: %v", ErrProtocol, r)
		}
	}()
	more, resp, err = n.Step(ch)
	if err != nil {
		err = fmt.Errorf("%w: SASL: %v", ErrProtocol, err)
	}
	return more, resp, err
}

// checkServerFirst validates a SCRAM server-first-message before it reaches
// the library: every attribute must be "x=...", else mellium.im/sasl v0.3.2
// loops forever, and the iteration count must be sane.
func checkServerFirst(ch []byte) error {
	for _, f := range bytes.Split(ch, []byte(",")) {
		if len(f) < 3 || f[1] != '=' {
			return fmt.Errorf("%w: malformed SCRAM challenge", ErrProtocol)
		}
		if f[0] == 'i' {
			n, err := strconv.Atoi(string(f[2:]))
			if err != nil || n < 1 || n > maxSCRAMIterations {
				return fmt.Errorf("%w: SCRAM iteration count out of range", ErrProtocol)
			}
		}
	}
	return nil
}
