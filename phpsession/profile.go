package phpsession

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Profile knows where an application keeps the logged-in user in its
// session: Expresso's own layout, or dotted key paths for any PHP app.
type Profile struct {
	name           string
	sessionTimeout time.Duration // expresso: session_dla must be newer
	user, password []string      // generic paths
	fullname       []string
	email          []string
}

// ExpressoProfile reads Expresso Livre's session layout. A session is
// logged in when phpgw_session.session_id is set and alive while
// phpgw_session.session_dla is within sessionTimeout (0 = 14400 s,
// Expresso's sessions_timeout default); see CheckActivity.
//
// The login is the first of these that is set (ExpressoUserPaths):
// phpgw_info.expressomail.user.account_lid, phpgw_info.expressomail.user.userid,
// wallet.user.uid (written at login by 2.5.x), phpgw_session.session_lid
// without its "@domain" (split at the last "@", as Expresso's
// split_login_domain does, so a uid may contain "@"), and
// phpgw_info.jabberit_messenger.user_jabber (JabberIt sites; the part before
// its last "@" if it has one).
//
// The password is the first of these that is set (ExpressoPasswordPaths):
// phpgw_info.expressomail.user.passwd, wallet.user.password,
// phpgw_session.phpgw_app_sessions.phpgwapi.password.content (base64 of
// the password when Expresso's mcrypt is off) and
// phpgw_info.jabberit_messenger.passwd. When mcrypt is on, that app-session
// content is the hex of 3DES ciphertext whose key needs the browser's kp3
// cookie and the site's encryption key: it is recognised, never decoded as
// base64 nor guessed, and when no other key holds the password the session
// is refused with a *PasswordUnavailableError.
func ExpressoProfile(sessionTimeout time.Duration) Profile {
	if sessionTimeout <= 0 {
		sessionTimeout = ExpressoSessionTimeout
	}
	return Profile{name: "expresso", sessionTimeout: sessionTimeout}
}

// Expresso's own settings, from its .htaccess and its setup defaults: what
// a site that did not change them runs with.
const (
	// ExpressoSessionTimeout is Expresso's sessions_timeout default; it
	// also sets session.gc_maxlifetime to it at run time and in .htaccess.
	ExpressoSessionTimeout = 14400 * time.Second
	// ExpressoSavePath is session.save_path in Expresso's .htaccess (its
	// Debian installer rewrites it to /var/lib/php5).
	ExpressoSavePath = "/dev/shm"
	// ExpressoCharset is Expresso's default_charset.
	ExpressoCharset = "ISO-8859-1"
	// ExpressoCookie is Expresso's session_name.
	ExpressoCookie = "sessionid"
)

// ExpressoUserPaths are the session keys the expresso profile takes the
// login from, in order; the first one set wins.
var ExpressoUserPaths = []string{
	"phpgw_info.expressomail.user.account_lid",
	"phpgw_info.expressomail.user.userid",
	"wallet.user.uid",
	"phpgw_session.session_lid",
	"phpgw_info.jabberit_messenger.user_jabber",
}

// ExpressoPasswordPaths are the session keys the expresso profile takes the
// password from, in order; the first one set wins.
var ExpressoPasswordPaths = []string{
	"phpgw_info.expressomail.user.passwd",
	"wallet.user.password",
	appSessionPassword,
	"phpgw_info.jabberit_messenger.passwd",
}

const appSessionPassword = "phpgw_session.phpgw_app_sessions.phpgwapi.password.content"

// GenericProfile reads the user from dotted key paths, e.g. "auth.user".
// fullnamePath and emailPath may be empty.
func GenericProfile(userPath, passwordPath, fullnamePath, emailPath string) Profile {
	split := func(p string) []string {
		if p == "" {
			return nil
		}
		return strings.Split(p, ".")
	}
	return Profile{name: "generic", user: split(userPath), password: split(passwordPath),
		fullname: split(fullnamePath), email: split(emailPath)}
}

// Name is "expresso" or "generic".
func (p Profile) Name() string {
	if p.name == "" {
		return "expresso"
	}
	return p.name
}

func scalar(v Value, ok bool, cs Charset) string {
	if !ok {
		return ""
	}
	switch v.Kind() {
	case KindString:
		return cs.String(v.Bytes())
	case KindInt:
		return strconv.FormatInt(v.Int(), 10)
	}
	return ""
}

// Identity extracts the logged-in user, or ErrNotLoggedIn / ErrExpired.
func (p Profile) Identity(vars *Array, cs Charset, now time.Time) (Identity, error) {
	if vars.Len() == 0 {
		return Identity{}, fmt.Errorf("%w: empty session", ErrNotLoggedIn)
	}
	if p.Name() == "generic" {
		if p.user == nil || p.password == nil {
			return Identity{}, fmt.Errorf("%w: generic profile needs user and password paths", ErrConfig)
		}
		get := func(path []string) string {
			if path == nil {
				return ""
			}
			v, ok := vars.Path(path...)
			return scalar(v, ok, cs)
		}
		return finish(Identity{User: get(p.user), Password: get(p.password), FullName: get(p.fullname), Email: get(p.email)})
	}
	get := func(path string) string {
		v, ok := vars.Path(strings.Split(path, ".")...)
		return scalar(v, ok, cs)
	}
	if get("phpgw_session.session_id") == "" {
		return Identity{}, fmt.Errorf("%w: no phpgw_session.session_id", ErrNotLoggedIn)
	}
	var id Identity
	if dla, ok := vars.Path("phpgw_session", "session_dla"); ok {
		var secs int64
		switch dla.Kind() {
		case KindInt:
			secs = dla.Int()
		case KindString:
			secs, _ = strconv.ParseInt(string(dla.Bytes()), 10, 64)
		case KindFloat:
			secs = int64(dla.Float())
		}
		if secs > 0 {
			id.LastActivity = time.Unix(secs, 0)
			if err := p.CheckActivity(id.LastActivity, now); err != nil {
				return Identity{}, err
			}
		}
	}
	for _, path := range ExpressoUserPaths {
		if u := get(path); u != "" {
			if path == "phpgw_session.session_lid" || path == "phpgw_info.jabberit_messenger.user_jabber" {
				u = SplitLogin(u)
			}
			if u != "" {
				id.User = u
				break
			}
		}
	}
	var encrypted *PasswordUnavailableError
	for _, path := range ExpressoPasswordPaths {
		pw := get(path)
		if pw == "" {
			continue
		}
		if path == appSessionPassword {
			if isMcryptHex(pw) {
				// Unusable, but a later key may still hold the password.
				encrypted = &PasswordUnavailableError{User: id.User, Key: path,
					Reason: "it holds Expresso's mcrypt ciphertext (hex of 3DES keyed by the browser's kp3 cookie and the site's encryption key), which cannot and must not be decrypted here",
					Enable: "phpgw_info.expressomail.user.passwd (ExpressoMail copies the user into the session when it opens) or wallet.user.password"}
				continue
			}
			raw, err := base64.StdEncoding.DecodeString(pw)
			if err != nil {
				continue
			}
			pw = cs.String(raw)
		}
		id.Password = pw
		break
	}
	if id.Password == "" && encrypted != nil && id.User != "" {
		return Identity{}, encrypted
	}
	id.FullName = get("phpgw_info.expressomail.user.fullname")
	id.Email = get("phpgw_info.expressomail.user.email")
	return finish(id)
}

// SplitLogin returns the login without its "@domain": Expresso's
// split_login_domain cuts at the last "@", so "a@b@example.org" is user
// "a@b".
func SplitLogin(login string) string {
	if i := strings.LastIndexByte(login, '@'); i >= 0 {
		return login[:i]
	}
	return login
}

// isMcryptHex recognises Expresso's crypto->encrypt() output with mcrypt
// on: bin2hex of 3DES ciphertext, so lower-case hex whose length is a
// whole number of 8-byte blocks. Base64 of a password (mcrypt off) looks
// like that only for a password of 12n bytes whose every base64 digit
// falls in 0-9a-f; such a user is refused, never logged in with a wrong
// password.
func isMcryptHex(s string) bool {
	if len(s) < 16 || len(s)%16 != 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// CheckActivity is the profile's inactivity rule, applied at every lookup
// to the activity time the profile read (zero: the session keeps none):
// for Expresso, a session whose session_dla is older than sessions_timeout
// is expired, as Expresso's own verify() treats it. Generic sessions have
// no such rule.
func (p Profile) CheckActivity(last time.Time, now time.Time) error {
	if p.Name() != "expresso" || last.IsZero() {
		return nil
	}
	timeout := p.sessionTimeout
	if timeout <= 0 {
		timeout = ExpressoSessionTimeout
	}
	if now.Sub(last) > timeout {
		return fmt.Errorf("%w: inactive since %s", ErrExpired, last.UTC().Format(time.RFC3339))
	}
	return nil
}

func finish(id Identity) (Identity, error) {
	if id.User == "" {
		return Identity{}, fmt.Errorf("%w: no user in session", ErrNotLoggedIn)
	}
	if id.Password == "" {
		return Identity{}, fmt.Errorf("%w: no password in session", ErrNotLoggedIn)
	}
	return id, nil
}
