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
// logged in when phpgw_session.session_id is set, alive while
// phpgw_session.session_dla is within sessionTimeout (0 = 14400 s, Expresso's
// default), and names its user by phpgw_info.expressomail.user.account_lid
// (else phpgw_session.session_lid without "@domain"). The password is taken
// from the first of phpgw_info.expressomail.user.passwd, wallet.user.password,
// the base64 phpgw_session.phpgw_app_sessions.phpgwapi.password.content and
// phpgw_info.jabberit_messenger.passwd that is set.
func ExpressoProfile(sessionTimeout time.Duration) Profile {
	if sessionTimeout <= 0 {
		sessionTimeout = 14400 * time.Second
	}
	return Profile{name: "expresso", sessionTimeout: sessionTimeout}
}

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
	get := func(path ...string) string {
		v, ok := vars.Path(path...)
		return scalar(v, ok, cs)
	}
	if get("phpgw_session", "session_id") == "" {
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
			if now.Sub(id.LastActivity) > p.sessionTimeout {
				return Identity{}, fmt.Errorf("%w: inactive since %s", ErrExpired, id.LastActivity.UTC().Format(time.RFC3339))
			}
		}
	}
	user := get("phpgw_info", "expressomail", "user", "account_lid")
	if user == "" {
		lid := get("phpgw_session", "session_lid")
		user, _, _ = strings.Cut(lid, "@")
	}
	id.User = user
	for _, path := range [][]string{
		{"phpgw_info", "expressomail", "user", "passwd"},
		{"wallet", "user", "password"},
	} {
		if pw := get(path...); pw != "" {
			id.Password = pw
			break
		}
	}
	if id.Password == "" {
		if enc := get("phpgw_session", "phpgw_app_sessions", "phpgwapi", "password", "content"); enc != "" {
			if raw, err := base64.StdEncoding.DecodeString(enc); err == nil {
				id.Password = cs.String(raw)
			}
		}
	}
	if id.Password == "" {
		id.Password = get("phpgw_info", "jabberit_messenger", "passwd")
	}
	id.FullName = get("phpgw_info", "expressomail", "user", "fullname")
	id.Email = get("phpgw_info", "expressomail", "user", "email")
	return finish(id)
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
