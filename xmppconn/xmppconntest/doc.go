// Package xmppconntest starts a real, private Prosody 0.12 server for tests.
//
// StartProsody writes a configuration, a data directory, a log file and a
// freshly generated CA plus server certificate (ECDSA P-256, SAN = the test
// domain and "localhost") into tb.TempDir(), picks random free loopback ports
// and runs /usr/bin/prosody in the foreground as a child of the test. It
// returns once the server has finished starting and accepts connections on
// its client port; the process is stopped by tb.Cleanup.
//
// The server never touches the system Prosody: it has its own configuration,
// pidfile, data and ports, and s2s is disabled. Every prosodyctl call is run
// under a timeout, because prosodyctl can hang.
//
// Accounts are created with Register (through "prosodyctl register", as an
// administrator would) or, much faster, with RegisterMany, which writes
// Prosody's internal storage files directly: SCRAM-SHA-1 credentials for the
// default internal_hashed backend (computed in Go with a low iteration
// count), or the plaintext password for internal_plain (Options.PlainOnly).
//
// A small helper module loaded into the server records every SASL success and
// failure in Server.AuditFile, so tests can count authentication attempts
// (AuthFailures, AuthMechanisms) at any log level, without
// depending on Prosody's debug output.
//
// StartEjabberd does the same for Debian's ejabberd 23.01: a private node
// with its own spool, cookie and distribution port (no epmd), started with
// "ejabberdctl foreground".
//
// Both starters pick free ports (FreePorts) and bind them a moment later:
// when another process took one in between (the server logs the bind
// failure, or exits on it), they start the server again on other ports.
// Ready is judged from the started process's own log (every port bound),
// never from whatever answers on a port alone.
//
// StartFakeServer is a scripted in-process server (STARTTLS with the test
// certificate, SASL PLAIN, bind) for protocol edge cases that real servers
// cannot be made to produce: the test receives each bound connection and
// writes whatever bytes it wants, optionally one byte per write.
//
// StartProsody and StartEjabberd fail the test when their binaries are
// missing, and skip it only under -short (go test -short, make test-short:
// the unit tests alone, on a machine without the servers). StartFakeServer
// never skips. NeedBinary applies the same rule to the other programs an
// integration test runs (the examples' node, chromium and apache2).
//
// Restart, Stop, Start and Kill let tests exercise reconnection: Restart and
// Stop are graceful (SIGTERM), Kill is SIGKILL, and Start brings the server
// back on the same ports with the same data.
//
// StartProxy relays loopback TCP connections to any server and breaks the
// link as a network would (Cut, Refuse and Restore, Hold), with the server
// left running; its goroutines end with the test.
//
// Typical use in a test:
//
//	srv := xmppconntest.StartProsody(t, xmppconntest.Options{})
//	srv.RegisterMany(t, map[string]string{"alice": "pw", "bob": "pw"})
//	conn, err := xmppconn.Dial(t.Context(), xmppconn.Config{
//		Addr: srv.Addr, Domain: srv.Domain, TLSConfig: srv.TLSConfig(),
//		User: "alice", Password: "pw", Resource: "web", Handler: h,
//	})
//	...
//	srv.Restart(t) // or srv.Kill(t); srv.Start(t)
//	if n := srv.AuthFailures("alice"); n != 1 { ... }
package xmppconntest
