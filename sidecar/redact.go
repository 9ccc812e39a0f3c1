package sidecar

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"unicode"
)

// secretKey reports whether a session key names a secret, so that
// `imsidecar session show` prints only the length of what is under it.
// Expresso keeps many: the user's password in plain text
// (expressomail.user.passwd, wallet.user.password, jabberit_messenger.passwd),
// base64-encoded under phpgw_app_sessions.phpgwapi.password, and the
// server's own (db_pass, password_ldap_jabberit, encryptkey, kp3…).
// The key is split into words (on punctuation and camelCase); it is a
// secret when a word contains pass, secret, token, credential or
// cookie, is or ends in pw, pwd, key or hash, or is one of pin, salt, auth,
// kp3, sid; session_id and sessionid are secrets too (the PHP session id
// Expresso copies into the session).
func secretKey(key string) bool {
	lower := strings.ToLower(key)
	switch lower {
	case "session_id", "sessionid", "phpsessid", "session_kp3":
		return true
	}
	for _, w := range keyWords(key) {
		for _, part := range []string{"pass", "secret", "token", "credential", "cookie", "passwd"} {
			if strings.Contains(w, part) {
				return true
			}
		}
		for _, suffix := range []string{"pw", "pwd", "key", "hash"} {
			if strings.HasSuffix(w, suffix) {
				return true
			}
		}
		switch w {
		case "pin", "salt", "auth", "kp3", "sid", "otp", "totp":
			return true
		}
	}
	return false
}

// keyWords splits a key into lower-case words: "db_pass" → db, pass;
// "apiKey" → api, key; "session.kp3" → session, kp3.
func keyWords(key string) []string {
	var words []string
	var cur []rune
	flush := func() {
		if len(cur) > 0 {
			words = append(words, strings.ToLower(string(cur)))
			cur = cur[:0]
		}
	}
	prev := rune(0)
	for _, r := range key {
		switch {
		case !unicode.IsLetter(r) && !unicode.IsDigit(r):
			flush()
		case unicode.IsUpper(r) && unicode.IsLower(prev):
			flush()
			cur = append(cur, r)
		default:
			cur = append(cur, r)
		}
		prev = r
	}
	flush()
	return words
}

// sessionIDArg is the id `session show` reads: its one argument, or, when
// there is none or it is "-", the first line of stdin, which keeps the id
// out of /proc/*/cmdline and the shell history.
func sessionIDArg(rest []string, stdin io.Reader) (string, error) {
	switch {
	case len(rest) > 1:
		return "", fmt.Errorf("%w: usage: imsidecar session show [flags] [ID|-] (no ID or -: read it from stdin)", ErrConfig)
	case len(rest) == 1 && rest[0] != "-":
		return rest[0], nil
	}
	if stdin == nil {
		return "", fmt.Errorf("%w: session show: no ID and no stdin", ErrConfig)
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, 1024)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("%w: session show: reading the ID from stdin: %w", ErrConfig, err)
	}
	id := strings.TrimSpace(line)
	if id == "" {
		return "", fmt.Errorf("%w: session show: no session ID on stdin", ErrConfig)
	}
	return id, nil
}
