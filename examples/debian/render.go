// Package debian renders the parts of imsidecar's Debian package that come
// from the daemon's flag set, so that they can never disagree with it: the
// man page imsidecar(8) and the conffile /etc/default/imsidecar, every
// setting listed with its default, commented out. docs/CONFIG.md comes from
// the same sidecar.Flags.
//
// build.sh (run by `make deb`) calls them through cmd/debgen and assembles
// the package with dpkg-deb; the tests keep both renderings equal to the
// flag set and install, check, remove and purge the built package.
package debian

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"

	"expressolivre.org/imsidecar/sidecar"
)

// Packaged are the settings the package sets in /etc/default/imsidecar
// because its own layout needs them: the unit runs as the system user
// imsidecar (a member of www-data), not as www-data, and the package creates
// an API token at install.
var Packaged = []Setting{
	{Name: "session-owner", Value: "33", Why: "PHP (www-data, uid 33 on every Debian system) owns the session files; the service runs as imsidecar, a member of www-data, so PHP must create them group-readable: session.save_path = \"0;0640;/var/lib/php/sessions\" (see README.Debian)."},
	{Name: "api-token-file", Value: "/etc/imsidecar/api-token", Why: "created at install with a random token, root:www-data 0640: PHP (www-data) sends it as a Bearer token, the service reads it through its www-data membership, other local users cannot call the API."},
}

// Setting is a value the package gives a flag, and why.
type Setting struct {
	Name, Value, Why string
}

// Required are the flags the daemon cannot run without (their usage says
// "(required)"): until /etc/default/imsidecar sets them the service is
// "not configured" and is not started.
func Required(flags []sidecar.Flag) []sidecar.Flag {
	var req []sidecar.Flag
	for _, f := range flags {
		if strings.Contains(f.Usage, "(required)") {
			req = append(req, f)
		}
	}
	return req
}

// DefaultFile writes /etc/default/imsidecar: every flag once, with its
// meaning and default; the required ones first, then the ones the package
// sets, then the rest in name order. Only the packaged settings are active.
func DefaultFile(w io.Writer, flags []sidecar.Flag) error {
	b := &strings.Builder{}
	b.WriteString(`# /etc/default/imsidecar: the environment of imsidecar.service (a conffile:
# your edits are kept across upgrades).
#
# Generated from imsidecar's flag set: every setting is here once, with its
# meaning and its default, commented out. Uncomment and edit what your site
# needs, check it, then start (or restart) the service:
#
#   set -a; . /etc/default/imsidecar; set +a; imsidecar check-config
#   systemctl restart imsidecar
#
# The service is enabled at install but starts only once the required
# settings below are set (the unit's ExecCondition); a wrong value then
# fails its ExecStartPre, "imsidecar check-config", which names the setting.
# Full reference: man 8 imsidecar, /usr/share/doc/imsidecar/CONFIG.md.gz.

`)
	done := map[string]bool{}
	section := func(title string) { fmt.Fprintf(b, "# ---- %s ----\n\n", title) }
	entry := func(f sidecar.Flag, value string, active bool, why string) {
		done[f.Name] = true
		comment(b, "--"+f.Name+": "+f.Usage)
		if why != "" {
			comment(b, "Set by the package: "+why)
			if f.Default != "" {
				comment(b, "(Default without it: "+f.Default+".)")
			}
		}
		if !active {
			b.WriteString("#")
		}
		fmt.Fprintf(b, "%s=%s\n\n", f.Env, value)
	}
	byName := map[string]sidecar.Flag{}
	for _, f := range flags {
		byName[f.Name] = f
	}
	section("Required: the service starts once these are set")
	for _, f := range Required(flags) {
		entry(f, f.Default, false, "")
	}
	section("Set by the package")
	for _, p := range Packaged {
		f, ok := byName[p.Name]
		if !ok {
			return fmt.Errorf("debian: packaged setting --%s is not in the flag set", p.Name)
		}
		entry(f, p.Value, true, p.Why)
	}
	section("Everything else, with its default")
	for _, f := range flags {
		if !done[f.Name] {
			entry(f, f.Default, false, "")
		}
	}
	_, err := io.WriteString(w, strings.TrimSuffix(b.String(), "\n"))
	return err
}

// comment writes text as "# " lines of at most 76 columns.
func comment(b *strings.Builder, text string) {
	line := "#"
	for _, word := range strings.Fields(text) {
		if utf8.RuneCountInString(line)+1+utf8.RuneCountInString(word) > 76 && line != "#" {
			b.WriteString(line + "\n")
			line = "#"
		}
		line += " " + word
	}
	b.WriteString(line + "\n")
}

// ManPage writes imsidecar(8) in man(7) roff. date is the page's date
// (YYYY-MM-DD, the release's, for a reproducible build).
func ManPage(w io.Writer, flags []sidecar.Flag, version, date string) error {
	b := &strings.Builder{}
	fmt.Fprintf(b, ".TH IMSIDECAR 8 %q %q \"System Administration\"\n", date, "imsidecar "+version)
	b.WriteString(`.SH NAME
imsidecar \- keep Expresso Livre users online in Jabber/XMPP
.SH SYNOPSIS
.B imsidecar
.RB [ serve ]
.RI [ options ]
.br
.B imsidecar check\-config
.RI [ options ]
.br
.B imsidecar session show
.RI [ options ] " id"
.br
.B imsidecar version
.SH DESCRIPTION
.B imsidecar
runs beside Apache on an Expresso Livre web server. It reads the user's PHP
session straight from PHP's session store (files or Redis), holds one
XMPP client stream per logged\-in PHP session with the user's own
credentials, and gives the PHP code a local HTTP API (loopback or a unix
socket) to send messages, presence and roster changes and to long\-poll a
lossless stream of incoming events. When the PHP session ends the user goes
offline. The password never leaves the server.
.SH COMMANDS
.TP
.B serve
Run the daemon (the default). It tells systemd it is ready (sd_notify
READY=1) once it listens, and on SIGTERM closes every stream with
"unavailable" presence within \-\-shutdown\-timeout.
.TP
.B check\-config
Validate every option and report every problem, each naming its option;
exit 0 when the configuration is usable.
.TP
.BI "session show " id
Print the PHP session
.I id
decoded as JSON, never the password.
.TP
.B version
Print the version.
.SH OPTIONS
Every option has an environment twin
.BR IMSIDECAR_ \fIOPTION\fR
(upper case, dashes as underscores). An option on the command line wins
over the environment, which wins over the default. The Debian package's
service reads the environment from
.IR /etc/default/imsidecar .
`)
	for _, f := range flags {
		b.WriteString(".TP\n")
		b.WriteString(`\fB\-\-` + roff(f.Name) + `\fR`)
		if f.Type != "" {
			b.WriteString(`=\fI` + roff(f.Type) + `\fR`)
		}
		b.WriteString("\n" + roffLine(f.Usage) + "\n.br\n")
		def := "none"
		if f.Default != "" {
			def = `\fB` + roff(f.Default) + `\fR`
		}
		b.WriteString(`Environment: \fB` + roff(f.Env) + `\fR; default: ` + def + ".\n")
	}
	b.WriteString(`.SH FILES
.TP
.I /etc/default/imsidecar
The service's environment: every option, commented out with its default.
.TP
.I /etc/imsidecar/api\-token
The API bearer token, created at install (root:www\-data, mode 0640).
.TP
.I /lib/systemd/system/imsidecar.service
The hardened systemd unit (Type=notify).
.TP
.I /etc/apache2/conf\-available/imsidecar.conf
Optional Apache snippet for the browser's Server\-Sent Events path
(a2enconf imsidecar).
.TP
.I /usr/share/imsidecar/php/
The PHP client library.
.SH EXIT STATUS
0 on success (and after a graceful shutdown), 1 on any error, which is
printed on standard error.
.SH SEE ALSO
.BR systemctl (1),
.BR a2enconf (8),
.IR /usr/share/doc/imsidecar/README.Debian ,
.IR /usr/share/doc/imsidecar/API.md.gz .
`)
	_, err := io.WriteString(w, b.String())
	return err
}

// roffLine is text as one roff input line: roff escaped, and never
// starting with a control character.
func roffLine(s string) string {
	s = roff(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// roff escapes backslashes and dashes and spells non-ASCII characters as
// groff's \[uXXXX], so the page renders the same under any locale.
func roff(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\e`)
		case r == '-':
			b.WriteString(`\-`)
		case r > 127:
			fmt.Fprintf(&b, `\[u%04X]`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// packagedValue is the value the package gives name, "" if none.
func packagedValue(name string) string {
	i := slices.IndexFunc(Packaged, func(s Setting) bool { return s.Name == name })
	if i < 0 {
		return ""
	}
	return Packaged[i].Value
}
