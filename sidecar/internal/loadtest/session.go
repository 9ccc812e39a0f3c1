package loadtest

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// SessionUser is one Expresso user whose PHP session the generator writes.
type SessionUser struct {
	ID       string // PHP session id
	User     string // login (XMPP localpart)
	Password string
}

// kv is one entry of a PHP array, in insertion order.
type kv struct {
	k string
	v any // string, int, bool or []kv
}

// expressoSession builds the variables Expresso's login leaves in
// $_SESSION (the keys the expresso profile reads, plus the usual clutter),
// in the order ExpressoPHP writes them. Strings are ISO-8859-1.
func expressoSession(u SessionUser, now int64) []kv {
	acct := 1000 + len(u.User)
	return []kv{
		{"phpgw_session", []kv{
			{"session_id", u.ID},
			{"session_lid", u.User + "@default"},
			{"session_ip", "127.0.0.1"},
			{"session_logintime", int(now)},
			{"session_dla", int(now)},
			{"session_action", "/expressoMail/index.php"},
			{"session_flags", "N"},
			{"account_id", acct},
			{"expires_account", -1},
			{"phpgw_app_sessions", []kv{{"phpgwapi", []kv{{"password", []kv{{"content", base64.StdEncoding.EncodeToString([]byte(u.Password))}}}}}}},
		}},
		{"phpgw_info", []kv{{"expressomail", []kv{
			{"user", []kv{
				{"account_id", acct},
				{"account_lid", u.User},
				{"userid", u.User},
				{"passwd", u.Password},
				{"fullname", "User " + u.User},
				{"firstname", "User"},
				{"email", u.User + "@example.test"},
				{"account_dn", "uid=" + u.User + ",ou=people,dc=example,dc=test"},
				{"preferences", []kv{
					{"common", []kv{{"lang", "pt-br"}, {"template_set", "default"}}},
					{"expressoMail", []kv{{"max_email_per_page", 50}}},
				}},
				{"apps", []kv{
					{"expressoMail", []kv{{"title", "E-mail"}, {"enabled", true}}},
					{"calendar", []kv{{"title", "Agenda"}, {"enabled", true}}},
				}},
			}},
			{"server", []kv{{"db_pass", "not-the-user-password"}, {"sessions_timeout", 14400}}},
			{"email_server", []kv{{"imapServer", "127.0.0.1"}, {"organisationName", "\xd3rg\xe3o"}}},
		}}}},
		{"connection_db_info", []kv{{"user_auth", u.ID + "127.0.0.1Mozilla/5.0"}}},
	}
}

// EncodeSession renders u's Expresso session in PHP's "php"
// session.serialize_handler format, byte for byte what ExpressoPHP makes
// PHP write for the same user and time.
func EncodeSession(u SessionUser, now int64) []byte {
	var b bytes.Buffer
	for _, e := range expressoSession(u, now) {
		b.WriteString(e.k)
		b.WriteByte('|')
		serialize(&b, e.v)
	}
	return b.Bytes()
}

func serialize(b *bytes.Buffer, v any) {
	switch v := v.(type) {
	case string:
		fmt.Fprintf(b, "s:%d:\"%s\";", len(v), v)
	case int:
		fmt.Fprintf(b, "i:%d;", v)
	case bool:
		if v {
			b.WriteString("b:1;")
		} else {
			b.WriteString("b:0;")
		}
	case []kv:
		fmt.Fprintf(b, "a:%d:{", len(v))
		for _, e := range v {
			serialize(b, e.k)
			serialize(b, e.v)
		}
		b.WriteByte('}')
	default:
		panic(fmt.Sprintf("loadtest: cannot serialize %T", v))
	}
}

// WriteSessions writes the sessions of users into dir as PHP's files
// handler does (sess_<id>, mode 0600), all with session_dla = now.
func WriteSessions(dir string, users []SessionUser, now time.Time) error {
	for _, u := range users {
		name := filepath.Join(dir, "sess_"+u.ID)
		if err := os.WriteFile(name, EncodeSession(u, now.Unix()), 0o600); err != nil {
			return fmt.Errorf("loadtest: writing a session: %w", err)
		}
	}
	return nil
}

// ExpressoPHP is the PHP script that writes one session the way Expresso's
// login does, through PHP's own files handler; EncodeSession is its Go twin.
// Environment: LT_ID, LT_USER, LT_PASSWORD, LT_NOW.
const ExpressoPHP = `<?php
session_id(getenv('LT_ID'));
if (!session_start()) { fwrite(STDERR, "session_start failed\n"); exit(1); }
$now = (int) getenv('LT_NOW');
$user = getenv('LT_USER');
$acct = 1000 + strlen($user);
$_SESSION['phpgw_session'] = [
    'session_id' => getenv('LT_ID'),
    'session_lid' => $user . '@default',
    'session_ip' => '127.0.0.1',
    'session_logintime' => $now,
    'session_dla' => $now,
    'session_action' => '/expressoMail/index.php',
    'session_flags' => 'N',
    'account_id' => $acct,
    'expires_account' => -1,
    'phpgw_app_sessions' => ['phpgwapi' => ['password' => ['content' => base64_encode(getenv('LT_PASSWORD'))]]],
];
$_SESSION['phpgw_info']['expressomail']['user'] = [
    'account_id' => $acct,
    'account_lid' => $user,
    'userid' => $user,
    'passwd' => getenv('LT_PASSWORD'),
    'fullname' => 'User ' . $user,
    'firstname' => 'User',
    'email' => $user . '@example.test',
    'account_dn' => 'uid=' . $user . ',ou=people,dc=example,dc=test',
    'preferences' => ['common' => ['lang' => 'pt-br', 'template_set' => 'default'], 'expressoMail' => ['max_email_per_page' => 50]],
    'apps' => ['expressoMail' => ['title' => 'E-mail', 'enabled' => true], 'calendar' => ['title' => 'Agenda', 'enabled' => true]],
];
$_SESSION['phpgw_info']['expressomail']['server'] = ['db_pass' => 'not-the-user-password', 'sessions_timeout' => 14400];
$_SESSION['phpgw_info']['expressomail']['email_server'] = ['imapServer' => '127.0.0.1', 'organisationName' => mb_convert_encoding('Órgão', 'ISO-8859-1', 'UTF-8')];
$_SESSION['connection_db_info'] = ['user_auth' => getenv('LT_ID') . '127.0.0.1Mozilla/5.0'];
session_write_close();
`

// WriteSessionPHP writes u's session into dir with the real PHP CLI
// (ExpressoPHP). It fails when php is not installed.
func WriteSessionPHP(ctx context.Context, dir string, u SessionUser, now time.Time) error {
	php, err := exec.LookPath("php")
	if err != nil {
		return fmt.Errorf("loadtest: php not found (apt-get install php-cli php-mbstring): %w", err)
	}
	script := filepath.Join(dir, ".write-session.php")
	if err := os.WriteFile(script, []byte(ExpressoPHP), 0o600); err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	defer os.Remove(script)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, php,
		"-d", "session.save_handler=files", "-d", "session.save_path="+dir,
		"-d", "session.serialize_handler=php", "-d", "session.use_cookies=0",
		"-d", "session.use_strict_mode=0", "-d", "session.cache_limiter=",
		"-d", "session.gc_probability=0", "-d", "display_errors=stderr", "-d", "error_reporting=-1",
		script)
	cmd.Env = append(os.Environ(), "LT_ID="+u.ID, "LT_USER="+u.User, "LT_PASSWORD="+u.Password,
		"LT_NOW="+strconv.FormatInt(now.Unix(), 10))
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		return fmt.Errorf("loadtest: php writing a session: %v: %s", err, out)
	}
	return nil
}
